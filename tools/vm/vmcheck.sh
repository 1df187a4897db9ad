#!/bin/sh
# closetrace's checks inside the test VM (busybox sh; no python here). Started by /init.
# Prints markers the host parses (tools/vm/kernel-check):
#   VMCHECK kernel RELEASE | VMCHECK probes LIST | VMCHECK <check> PASS|FAIL|SKIP DETAIL
#   VMCHECK time <check> SECONDS | VMCHECK-BEGIN name / VMCHECK-END name around captured output
# The checks to run come from the kernel command line: ctvm.checks=doctor,lifecycle,race,btf
# (btf also reports btf_lifecycle and btf_race).
# The same script runs on the host (tools/vm/kernel-check --on-host) to compare verdicts: there,
# VMCHECK_* variables give the binaries, the checks, a scratch directory and the ports.
PATH=/bin:/sbin:/usr/bin:/usr/sbin:$PATH
CT=${VMCHECK_CLOSETRACE:-/bin/closetrace}
SERVER=${VMCHECK_SERVER:-/bin/ct_keepalive_server}
CLIENT=${VMCHECK_CLIENT:-/bin/ct_reuse_client}
T=${VMCHECK_TMP:-/tmp}
PORT_BASE=${VMCHECK_PORT_BASE:-8080}
IDLE_MS=500

checks=${VMCHECK_CHECKS:-$(sed -n 's/.*ctvm\.checks=\([^ ]*\).*/\1/p' /proc/cmdline)}
[ -n "$checks" ] || checks=doctor,lifecycle,race,btf
extra=$(sed -n 's/.*ctvm\.extra=\([^ ]*\).*/\1/p' /proc/cmdline)
# ctvm.libbpf_debug=1: libbpf's debug log (verifier logs included) from builds that print it
# when CLOSETRACE_LIBBPF_DEBUG is set.
grep -q 'ctvm\.libbpf_debug=1' /proc/cmdline && export CLOSETRACE_LIBBPF_DEBUG=1

mark() { echo "VMCHECK $*"; }
now() { cut -d' ' -f1 /proc/uptime; }
wanted() { case ",$checks," in *",$1,"*) return 0 ;; esac; return 1; }
# Prints a file between markers, so that the host can show it.
show() { echo "VMCHECK-BEGIN $1"; cat "$2"; echo "VMCHECK-END $1"; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# start_record TRACE ARGS...: `closetrace record` in the background, until its programs are
# attached (the trace's header line is written then).
REC=
start_record() {
	trace=$1
	shift
	rm -f "$trace" "$trace.err"
	$CT record -o "$trace" --linger-ms 300 --quiet "$@" 2>"$trace.err" &
	REC=$!
	i=0
	while [ $i -lt 900 ]; do # 90 s: loading and verifying under emulation is slow
		grep -q '"type":"header"' "$trace" 2>/dev/null && return 0 # written once attached
		if ! kill -0 $REC 2>/dev/null; then
			wait $REC
			return 1
		fi
		sleep 0.1
		i=$((i + 1))
	done
	return 1
}
stop_record() {
	kill -INT $REC 2>/dev/null
	wait $REC
}

SRV=
start_server() { # PORT [ARGS...]
	port=$1
	shift
	$SERVER --port "$port" --bind 127.0.0.1 --idle-timeout-ms $IDLE_MS "$@" >$T/server-$port.log 2>&1 &
	SRV=$!
	i=0
	while [ $i -lt 100 ]; do
		grep -q listening $T/server-$port.log && return 0
		sleep 0.05
		i=$((i + 1))
	done
	return 1
}
stop_server() { kill $SRV 2>/dev/null; wait $SRV 2>/dev/null; }

# conn_line TRACE ROLE CLIENT_PORT: the conn record of that role for the client's connection
# (the client's local port is the server's remote port, so the role tells the two apart).
conn_line() {
	grep '"type":"conn"' "$1" | grep "\"role\":\"$2\"" | grep -E "\"port\":$3[,}]"
}
has() { printf '%s' "$1" | grep -q "$2"; }
field() { # field LINE NAME: the value of "NAME" (the last one; strings without quotes)
	printf '%s' "$1" | sed -nE "s/.*\"$2\":(\"[^\"]*\"|[^,}]*).*/\1/p" | head -n1 | tr -d '"'
}
client_port() { sed -n 's/^connected local_port=\([0-9]*\).*/\1/p' "$1"; }

mark kernel "$(uname -r)"
mark info cpus "$(nproc)" mem_kb "$(sed -n 's/MemTotal: *\([0-9]*\).*/\1/p' /proc/meminfo)"
for sym in vmemmap_base page_offset_base; do
	if grep -q " $sym\$" /proc/kallsyms; then mark info ksym $sym present; else mark info ksym $sym absent; fi
done

# ---------------------------------------------------------------------------------- doctor
if wanted doctor; then
	t0=$(now)
	$CT doctor >$T/doctor.out 2>&1
	rc=$?
	show doctor $T/doctor.out
	probes=$(sed -n 's/^record will use: //p' $T/doctor.out)
	[ -n "$probes" ] && mark probes "$probes"
	if [ $rc -eq 0 ]; then
		mark doctor PASS "exit 0"
	else
		mark doctor FAIL "exit $rc: $(grep -m1 'cannot work here' $T/doctor.out || tail -n1 $T/doctor.out)"
	fi
	mark time doctor "$(elapsed "$t0")"
fi

# -------------------------------------------------------------------------------- lifecycle
# Real connections on loopback close in each way while record runs: the server's idle close
# (server first), the client's close (client first), the client's reset. Every connection must
# have both conn records, with the right initiator, how and verdict, and its two requests.
LIFE_FAIL=
expect_conn() { # TRACE ROLE PORT INITIATOR HOW VERDICT REQUESTS CASE
	line=$(conn_line "$1" "$2" "$3")
	if [ -z "$line" ]; then
		LIFE_FAIL="${LIFE_FAIL:+$LIFE_FAIL; }$8:$2:no-conn-record"
		return
	fi
	got="$(field "$line" initiator)/$(field "$line" how)/$(field "$line" verdict)"
	if [ "$got" != "$4/$5/$6" ]; then
		LIFE_FAIL="${LIFE_FAIL:+$LIFE_FAIL; }$8:$2:got=$got,want=$4/$5/$6"
	fi
	statuses=$(printf '%s' "$line" | grep -o '"status":200' | wc -l)
	if [ "$statuses" -ne "$7" ]; then
		LIFE_FAIL="${LIFE_FAIL:+$LIFE_FAIL; }$8:$2:requests-200=$statuses,want=$7"
	fi
}

check_lifecycle() { # NAME PORT [RECORD ARGS...]: marks NAME
	name=$1
	port=$2
	long_port=$((port + 10)) # the server with long response heads
	shift 2
	t0=$(now)
	LIFE_FAIL=
	if ! start_server $port; then
		mark $name FAIL "ct_keepalive_server did not start"
	elif ! start_record $T/$name.jsonl --port $port --port $long_port "$@"; then
		show record-stderr $T/$name.jsonl.err
		mark $name FAIL "record did not start: $(tail -n1 $T/$name.jsonl.err)"
		stop_server
	else
		# Server first: the client holds the connection past the server's idle timeout.
		$CLIENT --host 127.0.0.1 --port $port --delay-ms 50 --count 2 --hold-ms 3000 >$T/c1.out 2>&1
		# Client first: the client closes right after its last response.
		$CLIENT --host 127.0.0.1 --port $port --delay-ms 50 --count 2 >$T/c2.out 2>&1
		# Client reset: close with SO_LINGER 0.
		$CLIENT --host 127.0.0.1 --port $port --delay-ms 50 --count 2 --reset >$T/c3.out 2>&1
		# Long heads: the server's Keep-Alive field lies past the kernel's first 256 bytes of
		# each response, as Node writes it after an application's fields.
		stop_server
		if start_server $long_port --idle-timeout-ms 2000 --header-padding 600; then
			$CLIENT --host 127.0.0.1 --port $long_port --delay-ms 50 --count 2 >$T/c4.out 2>&1
		fi
		sleep 1 # past the linger: every connection is written before the end
		stop_record
		rrc=$?
		stop_server
		cat $T/c1.out $T/c2.out $T/c3.out $T/c4.out
		show $name-trace $T/$name.jsonl
		[ $rrc -eq 0 ] || LIFE_FAIL="${LIFE_FAIL:+$LIFE_FAIL; }record-exit=$rrc"
		grep -q 'closed-by-peer' $T/c1.out || LIFE_FAIL="${LIFE_FAIL:+$LIFE_FAIL; }server_first:server-did-not-close"
		p1=$(client_port $T/c1.out)
		p2=$(client_port $T/c2.out)
		p3=$(client_port $T/c3.out)
		p4=$(client_port $T/c4.out)
		expect_conn $T/$name.jsonl server "$p1" local fin local_idle_close 2 server_first
		expect_conn $T/$name.jsonl client "$p1" peer fin peer_idle_close 2 server_first
		expect_conn $T/$name.jsonl server "$p2" peer fin peer_idle_close 2 client_first
		expect_conn $T/$name.jsonl client "$p2" local fin local_idle_close 2 client_first
		expect_conn $T/$name.jsonl server "$p3" peer rst peer_reset 2 client_reset
		expect_conn $T/$name.jsonl client "$p3" local rst local_reset 2 client_reset
		expect_conn $T/$name.jsonl server "$p4" peer fin peer_idle_close 2 long_heads
		expect_conn $T/$name.jsonl client "$p4" local fin local_idle_close 2 long_heads
		for role in server client; do
			ka=$(field "$(conn_line $T/$name.jsonl $role "$p4")" keep_alive_timeout_s)
			[ "$ka" = 2 ] ||
				LIFE_FAIL="${LIFE_FAIL:+$LIFE_FAIL; }long_heads:$role:keep_alive_timeout_s=${ka:-none},want=2"
		done
		# The server's idle close: the idle time it records is its timeout.
		idle=$(field "$(conn_line $T/$name.jsonl server "$p1")" idle_ms)
		if ! awk -v i="${idle:-0}" -v t=$IDLE_MS 'BEGIN { exit !(i >= t - 5 && i <= t + 150) }'; then
			LIFE_FAIL="${LIFE_FAIL:+$LIFE_FAIL; }server_first:server:idle_ms=${idle:-none},want~$IDLE_MS"
		fi
		lost=$(sed -n 's/.*"lost_events":\([0-9]*\).*/\1/p' $T/$name.jsonl)
		[ "$lost" = "0" ] || LIFE_FAIL="${LIFE_FAIL:+$LIFE_FAIL; }lost_events=$lost"
		if [ -z "$LIFE_FAIL" ]; then
			mark $name PASS "server_first client_first client_reset long_heads: 8 conn records as expected (server idle_ms $idle)"
		else
			show record-stderr $T/$name.jsonl.err
			mark $name FAIL "$LIFE_FAIL"
		fi
	fi
	mark time $name "$(elapsed "$t0")"
}

# ------------------------------------------------------------------------------------- race
# The close race behind the 502: the server closes an idle connection at 500 ms, the client
# reuses it (POST /pay) after a delay swept across the timeout until the request meets the
# close. The server's conn record must say local_close_race.
check_race() { # NAME PORT [RECORD ARGS...]: marks NAME
	name=$1
	port=$2
	shift 2
	t0=$(now)
	if ! start_server $port; then
		mark $name FAIL "ct_keepalive_server did not start"
	elif ! start_record $T/$name.jsonl --port $port --events "$@"; then
		show record-stderr $T/$name.jsonl.err
		mark $name FAIL "record did not start: $(tail -n1 $T/$name.jsonl.err)"
		stop_server
	else
		hit=
		tries=0
		for delay in 490 495 500 503 506 510 515 520 530 540 560 600 700; do
			tries=$((tries + 1))
			$CLIENT --host 127.0.0.1 --port $port --delay-ms $delay --count 2 --method POST \
				--target /pay >$T/$name-$delay.out 2>&1
			echo "race delay ${delay}ms: $(grep '^request 2' $T/$name-$delay.out)"
			if grep -qE '^request 2 (reset|closed)' $T/$name-$delay.out; then
				hit=$delay
				break
			fi
		done
		sleep 1
		stop_record
		rrc=$?
		stop_server
		show $name-trace $T/$name.jsonl
		if [ -z "$hit" ]; then
			mark $name FAIL "no delay up to 700 ms met the server's close ($tries tries)"
		else
			p=$(client_port $T/$name-$hit.out)
			server=$(conn_line $T/$name.jsonl server "$p")
			client=$(conn_line $T/$name.jsonl client "$p")
			sv=$(field "$server" verdict)
			cv=$(field "$client" verdict)
			how=$(grep '^request 2' $T/$name-$hit.out | cut -d' ' -f3,5)
			# The late request as the kernel saw it in the segment it answered with RST (event
			# lines carry its parsed head, not its bytes).
			trigger=no
			grep '"kind":"reset_sent"' $T/$name.jsonl | grep -E "\"port\":$p[,}]" |
				grep -q '"method":"POST","target":"/pay"' && trigger=yes
			# The request sent before the server's FIN and left unread: the kernel's RST answers
			# no segment, and the server's record holds the request instead.
			[ $trigger = no ] && echo "$server" | grep -q '"outcome":"unread_at_close"' &&
				trigger="none, request unread at close"
			if [ "$sv" = local_close_race ] && [ $rrc -eq 0 ]; then
				mark $name PASS "delay ${hit}ms after $tries tries: client saw $how; server verdict $sv, client verdict ${cv:-none}; RST trigger payload captured: $trigger"
			else
				show record-stderr $T/$name.jsonl.err
				mark $name FAIL "delay ${hit}ms: client saw $how; server verdict ${sv:-none} (want local_close_race), client verdict ${cv:-none}, record exit $rrc"
			fi
		fi
	fi
	mark time $name "$(elapsed "$t0")"
}

wanted lifecycle && check_lifecycle lifecycle $PORT_BASE
wanted race && check_race race $((PORT_BASE + 1))

# ---------------------------------------------------------------------------------- open_end
# A keep-alive connection still open when record ends, after 30 answered exchanges: the kernel
# hands over what it holds of it (its iterator over socket storage), so both records count 30
# requests, none in flight, and none says its requests are a lower bound. The portable programs
# (raw tracepoints: 5.10) cannot: both records must say so (requests_lower_bound).
check_open_end() { # NAME PORT
	name=$1
	port=$2
	t0=$(now)
	trace=$T/open-end.jsonl
	if ! start_server $port --idle-timeout-ms 600000; then
		mark $name FAIL "server did not start"
		return
	fi
	if ! start_record "$trace" --port $port; then
		mark $name FAIL "record did not start: $(tail -n1 "$trace.err" 2>/dev/null)"
		stop_server
		return
	fi
	$CLIENT --port $port --delay-ms 0 --count 30 --hold-ms 600000 >$T/open-end-client.log 2>&1 &
	cli=$!
	i=0
	while [ $i -lt 300 ] && ! grep -q '^request 30 ' $T/open-end-client.log; do
		sleep 0.1
		i=$((i + 1))
	done
	stop_record
	rrc=$?
	kill $cli 2>/dev/null
	wait $cli 2>/dev/null
	stop_server
	cport=$(client_port $T/open-end-client.log)
	answered=$(grep -c '^request [0-9]* 200 ' $T/open-end-client.log)
	portable=
	grep -q '"state":"raw_tp/' "$trace" && portable=yes
	failed=
	bounded=0
	for role in server client; do
		line=$(conn_line "$trace" $role "$cport")
		listed=$(printf '%s' "$line" | grep -o '"outcome":"completed"' | wc -l)
		omitted=$(field "$line" requests_omitted)
		total=$((listed + ${omitted:-0}))
		if [ -n "$portable" ] && has "$line" '"requests_lower_bound":true' && [ $total -le 30 ]; then
			bounded=$((bounded + 1))
		elif [ -z "$line" ] || [ $total -ne 30 ] || has "$line" in_flight ||
			has "$line" requests_lower_bound; then
			failed="$failed $role(requests $total$(has "$line" requests_lower_bound && echo ', lower bound'))"
		fi
	done
	if [ $rrc -eq 0 ] && [ "$answered" = 30 ] && [ -z "$failed" ] && [ $bounded = 2 ]; then
		mark $name PASS "30 answered exchanges, portable programs: both records say requests_lower_bound"
	elif [ $rrc -eq 0 ] && [ "$answered" = 30 ] && [ -z "$failed" ] && [ $bounded = 0 ]; then
		mark $name PASS "30 answered exchanges, both records count 30 completed"
	else
		show open-end-trace "$trace"
		mark $name FAIL "record exit $rrc, client answered $answered, wrong:${failed:- none}"
	fi
	mark time $name "$(elapsed "$t0")"
}

wanted open_end && check_open_end open_end $((PORT_BASE + 5))

# -------------------------------------------------------------------------------------- btf
# A kernel without BTF, as on some older Amazon Linux 2 AMIs (hidden here under an empty tmpfs):
# record and doctor refuse in one line that names the fix (--btf FILE); with --btf and a copy of
# the kernel's BTF, the portable programs load and the lifecycle and race checks pass again
# (btf_lifecycle, btf_race). On a host (VMCHECK_BTF_FILE: a file made by bpftool gen
# min_core_btf) the BTF is not hidden and the refusal is not checked.
if wanted btf; then
	t0=$(now)
	port=$((PORT_BASE + 2))
	BTF_FAIL=
	hidden=
	btf_file=${VMCHECK_BTF_FILE:-$T/vmlinux.btf}
	if [ -z "$VMCHECK_BTF_FILE" ]; then
		cp /sys/kernel/btf/vmlinux $btf_file || BTF_FAIL="cannot-copy-the-kernel-btf"
		if mount -t tmpfs -o size=1m,mode=0555 none /sys/kernel/btf; then
			hidden=yes
		else
			BTF_FAIL="${BTF_FAIL:+$BTF_FAIL; }cannot-hide-/sys/kernel/btf"
		fi
	fi
	if [ -n "$hidden" ]; then
		if [ -e /sys/kernel/btf/vmlinux ]; then BTF_FAIL="${BTF_FAIL:+$BTF_FAIL; }still-visible"; fi
		$CT doctor >$T/doctor-nobtf.out 2>&1
		drc=$?
		show doctor-without-btf $T/doctor-nobtf.out
		[ $drc -ne 0 ] || BTF_FAIL="${BTF_FAIL:+$BTF_FAIL; }doctor-without-btf-succeeded"
		$CT record --port $port --duration 2 -o $T/nobtf.jsonl --quiet 2>$T/nobtf.err
		rc=$?
		show record-without-btf $T/nobtf.err
		lines=$(wc -l <$T/nobtf.err)
		if [ $rc -eq 0 ]; then
			BTF_FAIL="${BTF_FAIL:+$BTF_FAIL; }record-without-btf-succeeded"
		elif ! grep -q -- '--btf FILE' $T/nobtf.err || [ "$lines" -ne 1 ]; then
			BTF_FAIL="${BTF_FAIL:+$BTF_FAIL; }record-without-btf-error-not-one-line-naming-the-fix"
		fi
	fi
	$CT doctor --btf $btf_file >$T/doctor-btf.out 2>&1
	drc=$?
	show doctor-with-btf-file $T/doctor-btf.out
	portable=$(sed -n 's/^record will use: //p' $T/doctor-btf.out)
	[ $drc -eq 0 ] || BTF_FAIL="${BTF_FAIL:+$BTF_FAIL; }doctor-with-btf-file-exit-$drc"
	# Another kernel's BTF (the host's, put into the image): doctor must not pass it.
	foreign=
	if [ -f /foreign.btf ]; then
		$CT doctor --btf /foreign.btf >$T/doctor-foreign.out 2>&1
		frc=$?
		show doctor-with-foreign-btf $T/doctor-foreign.out
		if [ $frc -eq 0 ]; then
			BTF_FAIL="${BTF_FAIL:+$BTF_FAIL; }doctor-passed-another-kernels-btf"
		elif grep -q "not this kernel's" $T/doctor-foreign.out; then
			foreign="another kernel's BTF fails doctor's test connection; "
		elif grep -q "this kernel's BTF (uname -r)?" $T/doctor-foreign.out; then
			foreign="another kernel's BTF fails to attach, naming the file; "
		else
			BTF_FAIL="${BTF_FAIL:+$BTF_FAIL; }another-kernels-btf-refused-without-naming-the-file"
		fi
	fi
	if [ -z "$BTF_FAIL" ]; then
		mark btf PASS "${hidden:+hidden BTF: record and doctor refuse naming --btf FILE; }${foreign}doctor --btf uses: $portable"
	else
		mark btf FAIL "$BTF_FAIL"
	fi
	mark time btf "$(elapsed "$t0")"
	check_lifecycle btf_lifecycle $((PORT_BASE + 3)) --btf $btf_file
	check_race btf_race $((PORT_BASE + 4)) --btf $btf_file
	[ -n "$hidden" ] && umount /sys/kernel/btf
fi

# ------------------------------------------------------------------------- extra diagnostics
# ctvm.extra=loadall: the verifier's own words, via bpftool (when the image has it).
if [ "$extra" = loadall ] && [ -x /bin/bpftool ] && [ -f /closetrace.bpf.o ]; then
	mkdir -p /sys/fs/bpf/ct
	bpftool -d prog loadall /closetrace.bpf.o /sys/fs/bpf/ct >$T/loadall.out 2>&1
	mark info loadall-exit $?
	show bpftool-loadall $T/loadall.out
	rm -rf /sys/fs/bpf/ct
fi
exit 0
