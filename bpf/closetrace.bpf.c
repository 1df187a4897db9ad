// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * closetrace kernel programs: the lifecycle of tracked TCP sockets (state changes, resets sent
 * and received) and the first bytes of each new message on them. Built only on tracepoints and
 * cgroup hooks: kprobes and fentry are not available on every host.
 *
 * Built twice. The default object uses BTF tracepoints (tp_btf), which need the kernel's own
 * BTF. With CT_NO_KERNEL_BTF it is the portable object for kernels built without BTF: raw
 * tracepoints, CO-RE against a BTF file the user supplies (record --btf), per-socket state in an
 * LRU hash keyed by socket address instead of socket storage (which tracing programs can use only
 * with kernel BTF), and identities of its own instead of socket cookies (which raw tracepoints
 * cannot ask for).
 */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "closetrace.h"

#ifdef CT_NO_KERNEL_BTF
#define CT_TRACEPOINT(name) SEC("raw_tp/" name)
#else
#define CT_TRACEPOINT(name) SEC("tp_btf/" name)
#endif

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD

/* TCP_* states are the kernel's own enum, from vmlinux.h (state records carry them as such). */
#define PF_EXITING 0x00000004 /* include/linux/sched.h: the task is exiting */

/*
 * The record layouts this object was built with (closetrace.h). The loader compares it with the
 * CT_ABI_VERSION it was compiled with before loading: the skeleton embeds an object built
 * separately from the binary, so a compile-time check on the header alone cannot see a stale one.
 */
const volatile __u32 abi_version = CT_ABI_VERSION;

/* Filters, written by userspace before the programs load. */
const volatile __u16 filter_ports[CT_MAX_PORTS] = {};
const volatile __u32 filter_port_count = 0;
const volatile __u64 filter_cgroup_id = 0; /* cgroup v2 id (inode) of --cgroup, 0 = any */
const volatile __u32 filter_cgroup_level = 0;
const volatile __u32 filter_netns = 0; /* network namespace inode, 0 = any */
/* A request after at least this much silence on its socket is written (record --idle-gap). */
const volatile __u64 idle_gap_ns = 500000000ULL;
/* record --http2-names: each HTTP/2 header block fragment is copied to userspace. */
const volatile bool copy_http2_fragments = false;

/*
 * Set by userspace once every program is attached, and cleared before any is detached: the
 * recording is the span in which every program sees every socket, and outside it no program
 * records anything. Programs attach and detach one at a time: a connection opened in between
 * would lose its first request, one closed in between its last answer (its close seen, the
 * response before it not: a request falsely in flight). Sockets opened before this is set are
 * met later as open before recording. In the portable object it also keeps an entry from
 * being made for a socket that dies before the state program sees its close: such an entry
 * would stay live and be taken over by the next socket at that address.
 */
volatile __u32 recording = 0;

/* Kernel layout facts the loader cannot give us any other way (x86_64 direct map). */
extern const void vmemmap_base __ksym __weak;
extern const void page_offset_base __ksym __weak;
extern unsigned long CONFIG_HZ __kconfig __weak;

#ifndef CT_NO_KERNEL_BTF
/* Reads skb data wherever it lies (6.15+ allows it from tp_btf); weak: absent before 6.4. */
extern int bpf_dynptr_from_skb(struct __sk_buff *skb, __u64 flags,
			       struct bpf_dynptr *ptr__uninit) __ksym __weak;
#endif

/*
 * Socket fields, one path without pointer hops: loaded directly where the kernel has BTF (the
 * verifier lets programs load from tp_btf's typed arguments: no helper call per field, which
 * made up most of a state change's cost), through CO-RE probe reads in the portable object.
 */
#ifdef CT_NO_KERNEL_BTF
#define SOCK_READ(src, field) BPF_CORE_READ(src, field)
#define SOCK_READ_INTO(dst, src, field) BPF_CORE_READ_INTO(dst, src, field)
#else
#define SOCK_READ(src, field) ((src)->field)
#define SOCK_READ_INTO(dst, src, field) __builtin_memcpy(dst, &(src)->field, sizeof((src)->field))
#endif

/* Local flavour of the kernel's enum (6.10+): lets CO-RE tell whether the reason exists. */
enum sk_rst_reason___ct { SK_RST_REASON_NOT_SPECIFIED___ct = 0 };

/* The latest message of one kind on a socket, kept until it is known whether it matters. */
enum slot_status {
	SLOT_EMPTY = 0,
	SLOT_HELD = 1,      /* nothing marked it: written only if the connection closes next */
	SLOT_TO_WRITE = 2,  /* it matters: written once its head is whole */
	SLOT_WRITTEN = 3,
};

struct message_slot {
	__u64 ts_ns;
	__u64 previous_ns;
	__u32 segment_len;
	__u32 counts_before[2]; /* requests and responses before it */
	__u16 captured;
	__u8 direction;
	__u8 status;        /* enum slot_status */
	__u8 head_complete; /* the blank line ending the head, or CT_PAYLOAD_MAX bytes, was seen */
	__u8 tail_at;       /* ct_message_event.tail_at */
	__u8 pad[6];
	__u8 head[CT_PAYLOAD_MAX];
};

/*
 * Messages of one socket, counted in the kernel: a busy keep-alive connection costs no record
 * per request. Written only by the cgroup_skb programs, which see every segment. What every
 * packet reads comes first, before the slots: with the hot fields of sock_state it fits the
 * cache line of the storage element's header (the bpf_local_storage_data's map pointer).
 */
struct message_state {
	__u64 last_start_ns;          /* the latest message start, either kind */
	__u32 counts[2];              /* messages of each kind so far */
	__u32 next_seq[2];            /* by direction - 1: the sequence number after the last byte */
	__u8 seq_known;               /* bit (1 << (direction - 1)): next_seq holds one */
	__u8 request_direction;       /* enum ct_direction; 0 until the first message tells */
	__u8 current;                 /* kind of the message whose segments are passing */
	__u8 answer_pending;          /* a written request: its responses are written too */
	__u8 interim;                 /* a 1xx response passed: the request's body comes next */
	__u8 http2;                   /* enum http2_followed: decided by the socket's first payload */
	__u8 switched;                /* a 101 Switching Protocols passed: no HTTP/1.x after it */
	__u8 short_heads;             /* a long response's head fit the capture: so will the next */
	struct message_slot slots[2]; /* by enum ct_message_kind */
};

/* message_state.http2 */
enum http2_followed {
	HTTP2_UNDECIDED = 0, /* no payload yet (or a socket met mid-life: never followed) */
	HTTP2_FOLLOWED = 1,  /* the socket has HTTP/2 state (http2_states): maybe h2c */
	HTTP2_NOT = 2,       /* not HTTP/2: its first payload, or a direction, opened otherwise */
};

/* Per-socket state. The fields every packet uses first (see message_state). */
struct sock_state {
#ifdef CT_NO_KERNEL_BTF
	__u64 identity;  /* stands for the socket cookie in records */
	__u64 closed_ns; /* reached TCP_CLOSE: the entry outlives the socket (see find_state) */
#endif
	__u64 last_rx_ns; /* last payload received (cgroup_skb; TLS alerts aside), 0 = none seen */
	__u64 last_tx_ns;
	__u32 netns;
	__u8 role;
	__u8 last_direction; /* direction of the last payload: a change starts a new message */
	__u8 close_written;  /* its TCP_CLOSE record went out, its held messages and counts first */
	__u8 pad[1];
#ifndef CT_NO_KERNEL_BTF
	struct message_state messages;
#endif
	__u64 established_ns;
	__u32 pid;
	char comm[CT_COMM_LEN];
	__u8 owner_from;    /* enum ct_owner_source */
	__u8 owner_exiting; /* the owner was exiting when it closed the socket */
	__u8 pad_owner[2];
};

#ifndef CT_NO_KERNEL_BTF
/* The element's data follows its 8-byte map pointer in a cache line of its own. */
_Static_assert(__builtin_offsetof(struct sock_state, messages.slots) <= 56,
	       "the fields every packet uses fit the storage element's first cache line");
#endif

#ifdef CT_NO_KERNEL_BTF
/* Sockets tracked at once; the loader may resize it. Least recently used entries go first. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64); /* the socket's address */
	__type(value, struct sock_state);
} sock_states SEC(".maps");

/*
 * What only the cgroup hooks use, in socket storage (which they, unlike raw tracepoints, can
 * use without kernel BTF): the way to the socket's state (its address), and its messages.
 */
struct sock_link {
	__u64 address;
	struct message_state messages;
};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sock_link);
} sock_links SEC(".maps");

/*
 * An entry is not freed with its socket: once closed it still serves the resets the kernel sends
 * from the dying socket in the same instant (data on a closed socket), then it is stale (the
 * address may belong to a new socket by then) and reads as absent.
 */
#define CT_CLOSED_STATE_GRACE_NS 10000000ULL
#else
/* Freed by the kernel with the socket. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sock_state);
} sock_states SEC(".maps");
#endif

/* One direction of an HTTP/2 connection, as its frames are walked segment by segment. */
struct http2_direction {
	struct ct_http2_side counts;
	__u32 skip;   /* bytes of a frame that continues into this direction's next segment */
	__u32 fragments; /* header block fragments walked (ct_http2_fragment_event.sequence) */
	__u8 walking; /* its frames are followed from the start of its byte stream */
	__u8 pad[3];
};

/*
 * HTTP/2 state of a socket, kept apart from the message state (HTTP/1 sockets never get one):
 * created by a client preface, or by a SETTINGS frame opening a direction (the server's
 * preface may leave before the client's arrives), then dropped if the other direction opens
 * with anything but the client preface.
 */
struct http2_state {
	struct http2_direction directions[2]; /* by direction - 1 */
	__u64 pending;       /* client streams awaiting an answer (ct_http2_event.pending) */
	__u32 pending_index; /* (pending_base - 1) / 2 */
	__u8 client_direction; /* 0 until the client preface is seen */
	__u8 flags;            /* enum ct_http2_flag */
	__u8 goaway_passed;    /* a GOAWAY went either way: the connection is closing */
	__u8 pad;
};

/* In socket storage in both objects: only the cgroup hooks and the BTF state program use it. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct http2_state);
} http2_states SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20); /* resized by the loader */
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CT_COUNTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline void count(__u32 counter)
{
	__u64 *value = bpf_map_lookup_elem(&counters, &counter);
	if (value)
		*value += 1;
}

/*
 * One test of the reserved pointer only: 6.1's verifier does not know that ring buffer memory
 * it has seen non-NULL stays so, and a second test makes it follow a NULL path that still holds
 * the reservation ("Unreleased reference").
 */
static __always_inline void *reserve_event(__u32 size)
{
	void *record = bpf_ringbuf_reserve(&events, size, 0);
	if (!record)
		count(CT_COUNTER_LOST);
	return record;
}

/*
 * Wake the consumer only when the data waiting crosses a multiple of 2^wakeup_shift bytes (a
 * sixteenth of the ring): at most 16 wake-ups per ring's worth of records. A wake-up per record
 * (the default when the consumer keeps up) costs an irq_work self-IPI on the producing CPU for
 * every packet: a VM exit in a VM. The consumer also drains the ring at every poll timeout
 * (100 ms), so a quiet ring is never left unread. 0: the default, adaptive wake-up.
 */
const volatile __u32 wakeup_shift = 0;

static __always_inline void submit_event(void *record, __u32 size)
{
	__u64 flags = 0;
	if (wakeup_shift) {
		__u64 after = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
		__u64 before = after > size + 8 ? after - size - 8 : 0;
		flags = (after >> wakeup_shift) != (before >> wakeup_shift) ? BPF_RB_FORCE_WAKEUP
									 : BPF_RB_NO_WAKEUP;
	}
	bpf_ringbuf_submit(record, flags);
	count(CT_COUNTER_EMITTED);
}

/*
 * A copy length n (1..CT_PAYLOAD_MAX, checked by the caller) in a form older verifiers can
 * bound: 6.1 learns bounds only from comparisons with constants on the register it is given,
 * and the compiler, knowing n's range, drops or moves such tests. A mask on an opaque value
 * stays: ((n - 1) & (MAX - 1)) + 1 == n for n in 1..MAX (MAX a power of 2).
 */
_Static_assert((CT_PAYLOAD_MAX & (CT_PAYLOAD_MAX - 1)) == 0, "CT_PAYLOAD_MAX: a power of 2");
static __always_inline __u64 copy_len(__u64 n)
{
	__u64 minus_one = n - 1;
	barrier_var(minus_one);
	return (minus_one & (CT_PAYLOAD_MAX - 1)) + 1;
}

static __always_inline bool port_matches(__u16 lport, __u16 rport)
{
	if (filter_port_count == 0)
		return true;
	for (int i = 0; i < CT_MAX_PORTS; i++) {
		if (i >= filter_port_count)
			break;
		if (filter_ports[i] == lport || filter_ports[i] == rport)
			return true;
	}
	return false;
}

/* Before 5.15 (Amazon Linux 2's 5.10): the cgroup pointer is a word whose low bit set means
 * it holds net_cls/net_prio data instead. Before 6.0: the ancestors' ids, not pointers. */
struct sock_cgroup_data___old {
	__u64 val;
} __attribute__((preserve_access_index));
struct cgroup___old {
	__u64 ancestor_ids[0];
} __attribute__((preserve_access_index));

/* The socket's cgroup v2, NULL when none is recorded. */
static __always_inline struct cgroup *sock_cgroup(const struct sock *sk)
{
	if (bpf_core_field_exists(struct sock_cgroup_data, cgroup))
		return BPF_CORE_READ(sk, sk_cgrp_data.cgroup);
	const struct sock_cgroup_data___old *data = (const void *)&sk->sk_cgrp_data;
	__u64 val = BPF_CORE_READ(data, val);
	return (val & 1) ? NULL : (struct cgroup *)val;
}

/* Is the socket's cgroup (v2) the filter cgroup or below it? */
static __always_inline bool cgroup_matches(const struct sock *sk)
{
	if (filter_cgroup_id == 0)
		return true;
	struct cgroup *cgrp = sock_cgroup(sk);
	if (!cgrp)
		return false;
	if (BPF_CORE_READ(cgrp, level) < (int)filter_cgroup_level)
		return false;
	if (!bpf_core_field_exists(struct cgroup, ancestors)) {
		__u64 id = 0;
		void *slot = (void *)cgrp + bpf_core_field_offset(struct cgroup___old, ancestor_ids) +
			     filter_cgroup_level * sizeof(__u64);
		bpf_probe_read_kernel(&id, sizeof(id), slot);
		return id == filter_cgroup_id;
	}
	struct cgroup *ancestor = NULL;
	void *slot = (void *)cgrp + bpf_core_field_offset(struct cgroup, ancestors) +
		     filter_cgroup_level * sizeof(void *);
	bpf_probe_read_kernel(&ancestor, sizeof(ancestor), slot);
	return ancestor && BPF_CORE_READ(ancestor, kn, id) == filter_cgroup_id;
}

static __always_inline bool is_full_socket_state(int state)
{
	return state != TCP_TIME_WAIT && state != TCP_NEW_SYN_RECV;
}

/* A full socket as the TCP socket it is (the typed pointer the verifier needs for its fields). */
static __always_inline const struct tcp_sock *tcp_sock_of(const struct sock *sk)
{
#ifdef CT_NO_KERNEL_BTF
	return (const struct tcp_sock *)sk;
#else
	return bpf_skc_to_tcp_sock((void *)sk);
#endif
}

static __always_inline void tuple_from_sock(const struct sock *sk, struct ct_tuple *tuple)
{
	tuple->family = SOCK_READ(sk, __sk_common.skc_family);
	tuple->lport = SOCK_READ(sk, __sk_common.skc_num);
	/* The port is unbound (skc_num 0) by the time a closing socket reaches CLOSE. */
	if (tuple->lport == 0 && is_full_socket_state(SOCK_READ(sk, __sk_common.skc_state))) {
		const struct tcp_sock *tp = tcp_sock_of(sk);
		if (tp)
			tuple->lport = bpf_ntohs(SOCK_READ(tp, inet_conn.icsk_inet.inet_sport));
	}
	tuple->rport = bpf_ntohs(SOCK_READ(sk, __sk_common.skc_dport));
	if (tuple->family == AF_INET6) {
		SOCK_READ_INTO(&tuple->laddr, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
		SOCK_READ_INTO(&tuple->raddr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
	} else {
		SOCK_READ_INTO((__u32 *)tuple->laddr, sk, __sk_common.skc_rcv_saddr);
		SOCK_READ_INTO((__u32 *)tuple->raddr, sk, __sk_common.skc_daddr);
	}
}

static __always_inline __u32 sock_netns(const struct sock *sk)
{
	const struct net *net = SOCK_READ(sk, __sk_common.skc_net.net);
	return SOCK_READ(net, ns.inum);
}

/* A jiffies stamp of the socket converted to monotonic ns (HZ resolution). */
static __always_inline __u64 jiffies_to_mono(__u32 stamp, __u64 now)
{
	if (CONFIG_HZ == 0)
		return 0;
	__u32 elapsed = (__u32)bpf_jiffies64() - stamp;
	__u64 elapsed_ns = (__u64)elapsed * (1000000000ULL / CONFIG_HZ);
	return elapsed_ns < now ? now - elapsed_ns : 0;
}

static __always_inline void snapshot_sock(const struct sock *sk, const struct sock_state *state,
					  struct ct_sock_snapshot *snap, __u64 now)
{
	const struct tcp_sock *tp = tcp_sock_of(sk);
	if (!tp)
		return;
	snap->bytes_in = SOCK_READ(tp, bytes_received);
	snap->bytes_out = SOCK_READ(tp, bytes_acked);
	snap->segs_in = SOCK_READ(tp, segs_in);
	snap->segs_out = SOCK_READ(tp, segs_out);
	snap->unacked_out = SOCK_READ(tp, snd_nxt) - SOCK_READ(tp, snd_una);
	snap->unread_in = SOCK_READ(tp, rcv_nxt) - SOCK_READ(tp, copied_seq);
	/* Exact times when the cgroup hooks saw the payload; the kernel's jiffies otherwise. */
	if (state && state->last_rx_ns)
		snap->last_rx_ns = state->last_rx_ns;
	else
		snap->last_rx_ns =
			jiffies_to_mono(SOCK_READ(tp, inet_conn.icsk_ack.lrcvtime), now);
	if (state && state->last_tx_ns)
		snap->last_tx_ns = state->last_tx_ns;
	else
		snap->last_tx_ns = jiffies_to_mono(SOCK_READ(tp, lsndtime), now);
	/* Stamps from before the connection existed mean "no payload yet". */
	if (state && snap->last_rx_ns < state->established_ns)
		snap->last_rx_ns = state->established_ns;
	if (state && snap->last_tx_ns < state->established_ns)
		snap->last_tx_ns = state->established_ns;
}


/* States in which a socket we have not seen before is a connection open before recording. */
static __always_inline bool is_midlife_state(int state)
{
	return state == TCP_ESTABLISHED || state == TCP_CLOSE_WAIT || state == TCP_FIN_WAIT1 ||
	       state == TCP_FIN_WAIT2 || state == TCP_LAST_ACK || state == TCP_CLOSING;
}

/*
 * Our close, made by the owning process (close(), shutdown(), or its exit closing its files), so
 * `current` is that process: our FIN, or an abort (close() with unread data resets the
 * connection: ESTABLISHED or CLOSE_WAIT straight to CLOSE). The kernel's own aborts (a received
 * RST, a retransmission timeout) also go to CLOSE, in softirq, but set sk_err first.
 */
static __always_inline bool by_owner_close(const struct sock *sk, int oldstate, int newstate)
{
	if ((oldstate == TCP_ESTABLISHED && newstate == TCP_FIN_WAIT1) ||
	    (oldstate == TCP_CLOSE_WAIT && newstate == TCP_LAST_ACK))
		return true;
	return newstate == TCP_CLOSE &&
	       (oldstate == TCP_ESTABLISHED || oldstate == TCP_CLOSE_WAIT) &&
	       SOCK_READ(sk, sk_err) == 0;
}

static __always_inline void remember_owner(struct sock_state *state, __u8 source)
{
	state->owner_from = source;
	state->pid = bpf_get_current_pid_tgid() >> 32;
	bpf_get_current_comm(&state->comm, sizeof(state->comm));
	if (source == CT_OWNER_CLOSE) {
		struct task_struct *task = (struct task_struct *)bpf_get_current_task();
		state->owner_exiting = (BPF_CORE_READ(task, flags) & PF_EXITING) != 0;
	}
}

/*
 * The state of a tracked socket. With `closing_now` (the time, for the resets a dying socket
 * sends), also one that reached TCP_CLOSE just before; with 0, only a live one.
 */
static __always_inline struct sock_state *find_state(const struct sock *sk, __u64 closing_now)
{
#ifdef CT_NO_KERNEL_BTF
	__u64 address = (__u64)sk;
	struct sock_state *state = bpf_map_lookup_elem(&sock_states, &address);
	if (state && state->closed_ns &&
	    (!closing_now || closing_now - state->closed_ns > CT_CLOSED_STATE_GRACE_NS))
		return NULL;
	return state;
#else
	return bpf_sk_storage_get(&sock_states, (struct sock *)sk, NULL, 0);
#endif
}

#ifdef CT_NO_KERNEL_BTF
/* A fresh entry for the socket at `address` (any stale one replaced). */
static __always_inline struct sock_state *create_state_at(const __u64 *address, __u64 now)
{
	struct sock_state fresh = {};
	/* Unique: one CPU never stamps two sockets in the same nanosecond. */
	fresh.identity = (now << 8) | (bpf_get_smp_processor_id() & 0xff);
	if (bpf_map_update_elem(&sock_states, address, &fresh, BPF_ANY))
		return NULL;
	return bpf_map_lookup_elem(&sock_states, address);
}
#endif

static __always_inline struct sock_state *new_state(struct sock *sk, __u8 role, __u64 now)
{
#ifdef CT_NO_KERNEL_BTF
	__u64 address = (__u64)sk;
	struct sock_state *state = create_state_at(&address, now);
#else
	struct sock_state *state =
		bpf_sk_storage_get(&sock_states, sk, NULL, BPF_SK_STORAGE_GET_F_CREATE);
#endif
	if (!state)
		return NULL;
	state->role = role;
	state->netns = sock_netns(sk);
	if (role != CT_ROLE_UNKNOWN)
		state->established_ns = now;
	return state;
}

/* What records call the socket: its cookie, or in the portable object the state's identity. */
static __always_inline __u64 sock_identity(const struct sock *sk, const struct sock_state *state)
{
#ifdef CT_NO_KERNEL_BTF
	return state ? state->identity : 0;
#else
	return bpf_get_socket_cookie((void *)sk);
#endif
}

static __always_inline bool sock_selected(const struct sock *sk)
{
	__u16 lport = SOCK_READ(sk, __sk_common.skc_num);
	__u16 rport = bpf_ntohs(SOCK_READ(sk, __sk_common.skc_dport));
	if (filter_netns && sock_netns(sk) != filter_netns)
		return false;
	return port_matches(lport, rport) && cgroup_matches(sk);
}

static __always_inline __u64 sock_cgroup_id(const struct sock *sk)
{
	struct cgroup *cgrp = sock_cgroup(sk);
	return cgrp ? BPF_CORE_READ(cgrp, kn, id) : 0;
}

/* The head of a record about a tracked full socket. */
static __always_inline void fill_sock_head(struct ct_event *head, struct sock *sk,
					   const struct sock_state *state, __u16 kind, __u16 size,
					   __u64 now)
{
	head->ts_ns = now;
	head->cookie = sock_identity(sk, state);
	head->netns = state->netns;
	head->kind = kind;
	head->size = size;
	tuple_from_sock(sk, &head->tuple);
}

/* Writes the message in the slot of `kind`; `head` names the socket (cookie, netns, tuple). */
static __always_inline void write_slot(const struct ct_event *head, __u8 role,
				       struct message_state *m, __u8 kind)
{
	struct message_slot *slot = &m->slots[kind & 1];
	__u8 flags = slot->status == SLOT_HELD ? CT_MESSAGE_HELD : 0;
	slot->status = SLOT_WRITTEN;
	struct ct_message_event *event = reserve_event(sizeof(*event));
	if (!event)
		return;
	__builtin_memset(event, 0, offsetof(struct ct_message_event, payload));
	event->hdr = *head;
	event->hdr.ts_ns = slot->ts_ns;
	event->hdr.kind = CT_EV_MESSAGE;
	event->hdr.size = sizeof(*event);
	event->previous_ns = slot->previous_ns;
	event->segment_len = slot->segment_len;
	event->requests = slot->counts_before[CT_MESSAGE_REQUEST];
	event->responses = slot->counts_before[CT_MESSAGE_RESPONSE];
	event->captured = slot->captured;
	event->direction = slot->direction;
	event->role = role;
	event->kind = kind;
	event->flags = flags;
	event->tail_at = slot->tail_at;
	__builtin_memcpy(event->payload, slot->head, CT_PAYLOAD_MAX);
	submit_event(event, sizeof(*event));
}

/*
 * The connection closes: its last request and response, held until now, are written, so that
 * its record shows the exchange it ended on (and a request still in flight). At every FIN or RST
 * and at TCP_CLOSE: a message that began after the first (a response to a client that shut down
 * its sending side, its body in its head's segment) waits for the rest of its head until then.
 */
static __always_inline void write_held(const struct ct_event *head, __u8 role,
				       struct message_state *m)
{
	for (__u8 kind = CT_MESSAGE_REQUEST; kind <= CT_MESSAGE_RESPONSE; kind++) {
		__u8 status = m->slots[kind].status;
		if (status == SLOT_HELD || status == SLOT_TO_WRITE)
			write_slot(head, role, m, kind);
	}
}

#ifndef CT_NO_KERNEL_BTF
/* What a socket's close writes of its messages: those held in its state (see write_held). */
static __always_inline void write_held_of_sock(struct sock *sk, struct sock_state *state, __u64 now)
{
	struct ct_event head = {};
	fill_sock_head(&head, sk, state, CT_EV_MESSAGE, sizeof(struct ct_message_event), now);
	write_held(&head, state->role, &state->messages);
}
#endif

/* A frame header's facts, with the error code of a GOAWAY or RST_STREAM. */
struct http2_frame {
	__u32 length;
	__u32 stream_id;
	__u32 last_stream_id; /* GOAWAY */
	__u32 error_code;     /* GOAWAY, RST_STREAM */
	__u8 type;
	__u8 flags;
};

/* An HTTP/2 record (enum ct_http2_record): a frame that matters (with `frame` and its
 * direction), or with NULL the connection's counts. `head` names the socket and the time. */
static __always_inline void write_http2(const struct ct_event *head, __u8 role,
					const struct http2_state *h2, __u8 record,
					const struct http2_frame *frame, __u8 direction)
{
	struct ct_http2_event *event = reserve_event(sizeof(*event));
	if (!event)
		return;
	__builtin_memset(event, 0, sizeof(*event));
	event->hdr = *head;
	event->hdr.kind = CT_EV_HTTP2;
	event->hdr.size = sizeof(*event);
	event->sides[0] = h2->directions[0].counts;
	event->sides[1] = h2->directions[1].counts;
	event->pending = h2->pending;
	event->pending_base = h2->pending_index * 2 + 1;
	event->client_direction = h2->client_direction;
	event->flags = h2->flags;
	event->role = role;
	event->record = record;
	event->in_skip = h2->directions[CT_DIR_IN - 1].skip;
	if (frame) {
		event->stream_id = frame->stream_id;
		event->error_code = frame->error_code;
		event->frame_len = frame->length;
		event->frame_type = frame->type;
		event->frame_flags = frame->flags;
		event->direction = direction;
	}
	submit_event(event, sizeof(*event));
}

#ifndef CT_NO_KERNEL_BTF
/* An HTTP/2 connection's counts (`record`: at its close, or at the end of the recording). */
static __always_inline void write_http2_counts(struct sock *sk, struct sock_state *state,
					       __u8 record, __u64 now)
{
	if (state->messages.http2 != HTTP2_FOLLOWED)
		return;
	struct http2_state *h2 = bpf_sk_storage_get(&http2_states, sk, NULL, 0);
	if (!h2 || !h2->client_direction)
		return;
	struct ct_event head = {};
	fill_sock_head(&head, sk, state, CT_EV_HTTP2, sizeof(struct ct_http2_event), now);
	write_http2(&head, state->role, h2, record, NULL, 0);
}
#endif

CT_TRACEPOINT("inet_sock_set_state")
int BPF_PROG(on_state_change, struct sock *sk, int oldstate, int newstate)
{
	/* Our FIN acknowledged: no trace line says when, and the close's facts are in the FIN's
	 * record and the one at TCP_CLOSE. Not written: a twelfth of a churn connection's records
	 * (docs/trace-format.md, `state` events). */
	if (!recording || (oldstate == TCP_FIN_WAIT1 && newstate == TCP_FIN_WAIT2))
		return 0;
	if (SOCK_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	__u16 family = SOCK_READ(sk, __sk_common.skc_family);
	if (family != AF_INET && family != AF_INET6)
		return 0;

	struct sock_state *state = find_state(sk, 0);

	if (newstate == TCP_SYN_SENT) {
		/* connect(): the only moment the connecting process is `current`. */
		if (!sock_selected(sk))
			return 0;
		state = new_state(sk, CT_ROLE_CLIENT, bpf_ktime_get_ns());
		if (state)
			remember_owner(state, CT_OWNER_CONNECT);
		return 0;
	}
	bool established =
		newstate == TCP_ESTABLISHED && (oldstate == TCP_SYN_SENT || oldstate == TCP_SYN_RECV);
	/* An untracked socket is tracked from its establishment, or from a change of its mid-life
	 * when it opened before the recording, if the filters select it. */
	if (!state && ((!established && !is_midlife_state(oldstate)) || !sock_selected(sk)))
		return 0;
	/* The clock is read only now: on a busy host most state changes are other sockets'. */
	__u64 now = bpf_ktime_get_ns();
	if (established) {
		__u8 role = oldstate == TCP_SYN_SENT ? CT_ROLE_CLIENT : CT_ROLE_SERVER;
		if (!state) {
			state = new_state(sk, role, now);
			if (!state)
				return 0;
		}
		state->role = role;
		state->established_ns = now;
	} else if (!state) {
		state = new_state(sk, CT_ROLE_UNKNOWN, now);
		if (!state)
			return 0;
	}

	__u8 flags = 0;
	if (by_owner_close(sk, oldstate, newstate)) {
		remember_owner(state, CT_OWNER_CLOSE);
		flags = CT_STATE_BY_OWNER | (state->owner_exiting ? CT_STATE_OWNER_EXITING : 0);
	}
#ifdef CT_NO_KERNEL_BTF
	/* Also when the record below is lost: the entry must not outlive its socket as live. */
	if (newstate == TCP_CLOSE)
		state->closed_ns = now;
#else
	/* Messages held until the close are written before it: also for a close that no FIN or RST
	 * packet announced (a retransmission timeout, failed keep-alive probes), and ahead of the
	 * reset an abort sends after this change. (The portable object writes them from the
	 * cgroup hooks only: its messages are in socket storage, which raw tracepoints cannot use.) */
	if (newstate == TCP_CLOSE) {
		write_held_of_sock(sk, state, now);
		/* An HTTP/2 connection's counts travel with its close, ahead of the state record. */
		write_http2_counts(sk, state, CT_HTTP2_CLOSE, now);
		state->close_written = 1;
	}
#endif

	struct ct_state_event *event = reserve_event(sizeof(*event));
	if (!event)
		return 0;
	__builtin_memset(event, 0, sizeof(*event));
	fill_sock_head(&event->hdr, sk, state, CT_EV_STATE, sizeof(*event), now);
	snapshot_sock(sk, state, &event->snap, now);
	event->established_ns = state->established_ns;
	event->cgroup_id = sock_cgroup_id(sk);
	event->pid = state->pid;
	__builtin_memcpy(event->comm, state->comm, sizeof(event->comm));
	event->old_state = oldstate;
	event->new_state = newstate;
	event->role = state->role;
	event->owner_from = state->owner_from;
	event->flags = flags;
	submit_event(event, sizeof(*event));
	return 0;
}

#ifndef CT_NO_KERNEL_BTF
/*
 * Run by the loader once, when the recording ends and every other program is detached: each
 * tracked socket still open writes the messages its close would have written, and an HTTP/2
 * connection its counts, so that the counts of a connection open at the end are exact and its
 * last exchange is known (a request answered is not left in flight). A socket whose close was
 * written has nothing held; one that closed after the recording ended is open to the trace. One
 * byte of output per socket lets the loader read a bounded number of sockets at a time and
 * drain the ring buffer in between. Iterators need the kernel's BTF: the portable object has
 * none.
 */
static __always_inline void write_open_socket(struct seq_file *seq, struct sock *sk,
					      struct sock_state *state)
{
	__u64 now = bpf_ktime_get_ns();
	write_held_of_sock(sk, state, now);
	/* An HTTP/2 connection's frames are counted, not written: its counts as they are now,
	 * unless its close wrote them. */
	if (!state->close_written)
		write_http2_counts(sk, state, CT_HTTP2_END, now);
	const char visited = 1;
	bpf_seq_write(seq, &visited, sizeof(visited));
}

/* Two variants; the loader keeps the first this kernel accepts. Every tracked socket, in every
 * network namespace, ... */
SEC("iter/bpf_sk_storage_map")
int write_open_messages(struct bpf_iter__bpf_sk_storage_map *ctx)
{
	struct sock *sk = ctx->sk;
	struct sock_state *state = ctx->value;
	if (sk && state)
		write_open_socket(ctx->meta->seq, sk, state);
	return 0;
}

/* ... or the TCP sockets of the loader's network namespace only (a kernel that refuses iterators
 * over map elements). */
SEC("iter/tcp")
int write_open_messages_netns(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct tcp_sock *tp = skc ? bpf_skc_to_tcp_sock(skc) : NULL;
	if (!tp)
		return 0;
	struct sock *sk = (struct sock *)tp;
	struct sock_state *state = find_state(sk, 0);
	if (state)
		write_open_socket(ctx->meta->seq, sk, state);
	return 0;
}
#endif

/* Maps a page to its address in the kernel's direct map (x86_64 with SPARSEMEM_VMEMMAP). */
static __always_inline const void *page_address_of(__u64 page)
{
	__u64 vmemmap = 0, direct_map = 0;
	if (!&vmemmap_base || !&page_offset_base) /* weak: unresolved on other arches */
		return NULL;
	bpf_probe_read_kernel(&vmemmap, sizeof(vmemmap), &vmemmap_base);
	bpf_probe_read_kernel(&direct_map, sizeof(direct_map), &page_offset_base);
	__u64 page_size = bpf_core_type_size(struct page);
	if (!vmemmap || !direct_map || page < vmemmap || page_size == 0)
		return NULL;
	return (const void *)(direct_map + ((page - vmemmap) / page_size) * 4096);
}

/* Layout of skb_frag_t on every kernel since 5.x: page (or netmem) pointer, length, offset. */
struct frag_layout {
	__u64 page;
	__u32 len;
	__u32 offset;
};

/*
 * Reads the segment that triggered a reset: its endpoints (it was received, so its source is
 * the peer), TCP flags and first payload bytes. The payload is in the linear area or, on
 * loopback, veth and most NICs, in page fragments: read through an skb dynptr where the kernel
 * allows it, else through the direct map (x86_64 kernels that export its base).
 */
static __always_inline void read_trigger(const struct sk_buff *skb, struct ct_reset_event *event,
					 bool use_dynptr)
{
	unsigned char *head = BPF_CORE_READ(skb, head);
	__u16 network = BPF_CORE_READ(skb, network_header);
	__u16 transport = BPF_CORE_READ(skb, transport_header);
	__u8 version = 0;
	__u32 ip_total = 0;

	bpf_probe_read_kernel(&version, 1, head + network);
	version >>= 4;
	if (version == 4) {
		struct iphdr ip;
		bpf_probe_read_kernel(&ip, sizeof(ip), head + network);
		event->hdr.tuple.family = AF_INET;
		__builtin_memcpy(event->hdr.tuple.raddr, &ip.saddr, 4);
		__builtin_memcpy(event->hdr.tuple.laddr, &ip.daddr, 4);
		ip_total = bpf_ntohs(ip.tot_len);
	} else if (version == 6) {
		struct ipv6hdr ip6;
		bpf_probe_read_kernel(&ip6, sizeof(ip6), head + network);
		event->hdr.tuple.family = AF_INET6;
		__builtin_memcpy(event->hdr.tuple.raddr, &ip6.saddr, 16);
		__builtin_memcpy(event->hdr.tuple.laddr, &ip6.daddr, 16);
		ip_total = bpf_ntohs(ip6.payload_len) + sizeof(struct ipv6hdr);
	} else {
		return;
	}

	__u8 tcp[20];
	if (bpf_probe_read_kernel(tcp, sizeof(tcp), head + transport))
		return;
	event->hdr.tuple.rport = (tcp[0] << 8) | tcp[1];
	event->hdr.tuple.lport = (tcp[2] << 8) | tcp[3];
	event->trigger_flags = tcp[13];
	__u32 headers = (__u32)(transport - network) + (tcp[12] >> 4) * 4;
	if (ip_total <= headers)
		return;
	event->payload_len = ip_total - headers;

	/* 64-bit arithmetic throughout: the verifier must see the copy length's bounds. */
	__u64 start = (__u64)transport + (tcp[12] >> 4) * 4; /* payload offset from head */
	__u64 linear_end = BPF_CORE_READ(skb, tail);
	__u64 want = event->payload_len < CT_PAYLOAD_MAX ? event->payload_len : CT_PAYLOAD_MAX;
	const void *source;
	__u64 available;

	if (start < linear_end) {
		source = head + start;
		available = linear_end - start;
#ifndef CT_NO_KERNEL_BTF
	} else if (use_dynptr) {
		struct bpf_dynptr data;
		__u64 data_offset = (__u64)BPF_CORE_READ(skb, data) - (__u64)head;
		if (bpf_dynptr_from_skb((struct __sk_buff *)skb, 0, &data))
			return;
		if (want == 0)
			return;
		__u64 len = copy_len(want);
		if (!bpf_dynptr_read(event->payload, len, &data, start - data_offset, 0))
			event->captured = len;
		return;
#endif
	} else {
		struct skb_shared_info *shinfo = (void *)(head + BPF_CORE_READ(skb, end));
		if (BPF_CORE_READ(shinfo, nr_frags) == 0)
			return;
		struct frag_layout frag;
		if (bpf_probe_read_kernel(&frag, sizeof(frag), &shinfo->frags[0]))
			return;
		if (frag.page & 1) /* net_iov (device memory), not a page */
			return;
		__u64 skip = start - linear_end;
		if (skip >= frag.len)
			return;
		const void *base = page_address_of(frag.page);
		if (!base)
			return;
		source = base + frag.offset + skip;
		available = frag.len - skip;
	}
	__u64 n = available < want ? available : want;
	if (n == 0)
		return;
	__u64 len = copy_len(n);
	if (!bpf_probe_read_kernel(event->payload, len, source))
		event->captured = len;
}

static __always_inline int handle_reset_sent(unsigned long long *ctx, const struct sock *sk,
					     const struct sk_buff *skb, bool use_dynptr)
{
	if (!recording)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	int reason = CT_RST_REASON_UNKNOWN;
	/* The reason argument exists since 6.10; reading it elsewhere would not verify. */
	if (bpf_core_enum_value_exists(enum sk_rst_reason___ct, SK_RST_REASON_NOT_SPECIFIED___ct))
		reason = (int)ctx[2];

	struct sock_state *state = NULL;
	int sk_state = 0;
	if (sk) {
		sk_state = SOCK_READ(sk, __sk_common.skc_state);
		if (is_full_socket_state(sk_state))
			state = find_state(sk, now);
	}

	struct ct_reset_event *event = reserve_event(sizeof(*event));
	if (!event)
		return 0;
	__builtin_memset(event, 0, sizeof(*event));
	if (skb) {
		read_trigger(skb, event, use_dynptr);
	} else if (sk) {
		tuple_from_sock(sk, &event->hdr.tuple);
	}

	/* A full socket we do not track, or a segment for none of the filtered ports: not ours. */
	bool selected = state != NULL;
	if (!selected && (!sk || !is_full_socket_state(sk_state)))
		selected = port_matches(event->hdr.tuple.lport, event->hdr.tuple.rport);
	if (!selected) {
		bpf_ringbuf_discard(event, 0);
		return 0;
	}

	event->hdr.ts_ns = now;
	event->hdr.kind = CT_EV_RESET_SENT;
	event->hdr.size = sizeof(*event);
	event->reason = reason;
	event->sk_state = sk_state;
	if (sk) {
		/* A time-wait socket has the full socket's cookie; in the portable object, none. */
		event->hdr.cookie = sock_identity(sk, state);
		event->hdr.netns = sock_netns(sk);
	} else if (skb) {
		event->hdr.netns = BPF_CORE_READ(skb, dev, nd_net.net, ns.inum);
	}
	if (state) {
		snapshot_sock(sk, state, &event->snap, now);
		event->role = state->role;
	}
	submit_event(event, sizeof(*event));
	return 0;
}

#ifndef CT_NO_KERNEL_BTF
/* Two variants of one program: the loader keeps the first that this kernel accepts. */
SEC("tp_btf/tcp_send_reset")
int BPF_PROG(on_reset_sent_dynptr, const struct sock *sk, const struct sk_buff *skb)
{
	return handle_reset_sent(ctx, sk, skb, true);
}
#endif

CT_TRACEPOINT("tcp_send_reset")
int BPF_PROG(on_reset_sent, const struct sock *sk, const struct sk_buff *skb)
{
	return handle_reset_sent(ctx, sk, skb, false);
}

CT_TRACEPOINT("tcp_receive_reset")
int BPF_PROG(on_reset_received, struct sock *sk)
{
	if (!recording)
		return 0;
	struct sock_state *state = find_state(sk, 0);
	if (!state)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	struct ct_reset_event *event = reserve_event(sizeof(*event));
	if (!event)
		return 0;
	__builtin_memset(event, 0, sizeof(*event));
	fill_sock_head(&event->hdr, sk, state, CT_EV_RESET_RECEIVED, sizeof(*event), now);
	snapshot_sock(sk, state, &event->snap, now);
	event->reason = CT_RST_REASON_UNKNOWN;
	event->sk_state = SOCK_READ(sk, __sk_common.skc_state);
	event->role = state->role;
	submit_event(event, sizeof(*event));
	return 0;
}

/* Do these first bytes of a payload open a response ("HTTP/")? */
static __always_inline bool is_response_start(const char start[5])
{
	return start[0] == 'H' && start[1] == 'T' && start[2] == 'T' && start[3] == 'P' &&
	       start[4] == '/';
}

/* Does the payload open a response? */
static __always_inline bool opens_response(struct __sk_buff *skb, __u32 payload_offset)
{
	char start[5];
	if (bpf_skb_load_bytes(skb, payload_offset, start, sizeof(start)))
		return false;
	return is_response_start(start);
}

/* Scratch for a head continued in a later segment (one per CPU: too big for the stack). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u8[CT_PAYLOAD_MAX]);
} head_scratch SEC(".maps");

/* A head ends with a blank line; a segment that ends on one leaves nothing to reassemble. */
static __always_inline void note_head_end(struct message_slot *slot)
{
	if (slot->captured >= CT_PAYLOAD_MAX) {
		slot->head_complete = 1;
		return;
	}
	if (slot->captured < 4)
		return;
	__u32 end = slot->captured;
	slot->head_complete = slot->head[(end - 4) & (CT_PAYLOAD_MAX - 1)] == '\r' &&
			      slot->head[(end - 3) & (CT_PAYLOAD_MAX - 1)] == '\n' &&
			      slot->head[(end - 2) & (CT_PAYLOAD_MAX - 1)] == '\r' &&
			      slot->head[(end - 1) & (CT_PAYLOAD_MAX - 1)] == '\n';
}

/*
 * Appends a segment's first bytes to a head that ended mid-segment (a client writing its request
 * a few bytes at a time). Byte by byte from a scratch copy: the verifier bounds an index, not
 * the sum of an offset and a length. Rare: most heads come whole in their first segment.
 */
static __always_inline void continue_head(struct __sk_buff *skb, struct message_slot *slot,
					  __u32 payload_offset, __u64 payload_len)
{
	__u32 zero = 0;
	__u8 *scratch = bpf_map_lookup_elem(&head_scratch, &zero);
	if (!scratch)
		return;
	__u64 room = CT_PAYLOAD_MAX - slot->captured;
	__u64 n = payload_len < room ? payload_len : room;
	if (n == 0 || n > CT_PAYLOAD_MAX)
		return;
	if (bpf_skb_load_bytes(skb, payload_offset, scratch, copy_len(n)))
		return;
	__u32 at = slot->captured;
	for (__u32 i = 0; i < CT_PAYLOAD_MAX; i++) {
		if (i >= n)
			break;
		slot->head[(at + i) & (CT_PAYLOAD_MAX - 1)] = scratch[i];
	}
	slot->captured = at + n;
	note_head_end(slot);
}

/*
 * A word of the cgroup hooks' socket context. Context fields take no pointer arithmetic, and
 * clang may merge two reads at different offsets into one with the offset in a register (the
 * verifier then refuses the program): the offset is an immediate of the load itself.
 */
#define BPF_SOCK_WORD(sk, field)                                                            \
	({                                                                                  \
		__u32 word;                                                                 \
		asm volatile("%0 = *(u32 *)(%1 + %2)"                                       \
			     : "=r"(word)                                                   \
			     : "r"(sk), "i"(offsetof(struct bpf_sock, field)));             \
		word;                                                                       \
	})

/* The tuple of a socket as the cgroup hooks see it. */
static __always_inline void tuple_from_bpf_sock(const struct bpf_sock *sk, struct ct_tuple *tuple)
{
	tuple->lport = sk->src_port;
	tuple->rport = bpf_ntohs(sk->dst_port);
	if (sk->family == AF_INET6) {
		tuple->family = AF_INET6;
		__u32 *local = (__u32 *)tuple->laddr, *remote = (__u32 *)tuple->raddr;
		local[0] = BPF_SOCK_WORD(sk, src_ip6[0]);
		local[1] = BPF_SOCK_WORD(sk, src_ip6[1]);
		local[2] = BPF_SOCK_WORD(sk, src_ip6[2]);
		local[3] = BPF_SOCK_WORD(sk, src_ip6[3]);
		remote[0] = BPF_SOCK_WORD(sk, dst_ip6[0]);
		remote[1] = BPF_SOCK_WORD(sk, dst_ip6[1]);
		remote[2] = BPF_SOCK_WORD(sk, dst_ip6[2]);
		remote[3] = BPF_SOCK_WORD(sk, dst_ip6[3]);
	} else {
		tuple->family = AF_INET;
		__u32 src = sk->src_ip4, dst = sk->dst_ip4;
		__builtin_memcpy(tuple->laddr, &src, 4);
		__builtin_memcpy(tuple->raddr, &dst, 4);
	}
}

/* A packet of a tracked socket, as the message logic needs it. */
struct packet {
	struct __sk_buff *skb;
	const struct bpf_sock *sk;
	struct sock_state *state;
	struct message_state *messages;
	__u64 now;
	__u32 payload_offset;
	__u32 payload_len;
	__u32 seq;
	__u8 direction;
	bool long_heads; /* the programs for a long response head (see on_packet) */
};

/* The socket of a packet, as message records name it. */
static __always_inline void packet_head(const struct packet *p, struct ct_event *head)
{
#ifdef CT_NO_KERNEL_BTF
	head->cookie = p->state->identity;
#else
	head->cookie = bpf_get_socket_cookie(p->skb);
#endif
	head->netns = p->state->netns;
	tuple_from_bpf_sock(p->sk, &head->tuple);
}

static __always_inline void write_packet_slot(const struct packet *p, __u8 kind)
{
	struct ct_event head = {};
	packet_head(p, &head);
	write_slot(&head, p->state->role, p->messages, kind);
}

/* What a response's status line says of the messages after it. */
enum response_opening {
	RESPONSE_FINAL = 0,
	RESPONSE_INTERIM = 1,   /* "HTTP/1.1 100 Continue": the request's body and final answer follow */
	RESPONSE_SWITCHING = 2, /* 101 Switching Protocols (a WebSocket): nothing after it is HTTP */
};

static __always_inline __u8 response_opening(struct __sk_buff *skb, __u32 payload_offset)
{
	char line[12];
	if (bpf_skb_load_bytes(skb, payload_offset, line, sizeof(line)) ||
	    !is_response_start(line) || line[9] != '1')
		return RESPONSE_FINAL;
	return line[10] == '0' && line[11] == '1' ? RESPONSE_SWITCHING : RESPONSE_INTERIM;
}

/* Requests come from the client; a socket first seen mid-life tells by its first message. */
static __always_inline __u8 request_direction_of(const struct packet *p)
{
	if (p->state->role == CT_ROLE_SERVER)
		return CT_DIR_IN;
	if (p->state->role == CT_ROLE_CLIENT)
		return CT_DIR_OUT;
	return opens_response(p->skb, p->payload_offset) ? (CT_DIR_IN + CT_DIR_OUT - p->direction)
							  : p->direction;
}

/* A long head is searched for its end a window at a time, up to ~2 KiB; each window overlaps the
 * one before by a word, so that a blank line across their border is found. */
#define CT_HEAD_WINDOW 512
#define CT_HEAD_WINDOWS 4
_Static_assert((CT_HEAD_WINDOW & (CT_HEAD_WINDOW - 1)) == 0, "CT_HEAD_WINDOW: a power of 2");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u8[CT_HEAD_WINDOW]);
} head_window SEC(".maps");

/* 0x80 in each byte of x that is zero, and nothing elsewhere (no borrow from byte to byte). */
static __always_inline __u64 zero_bytes(__u64 x)
{
	const __u64 low7 = 0x7f7f7f7f7f7f7f7fULL;
	return ~(((x & low7) + low7) | x | low7);
}

/* The index of the lowest byte of a mask that zero_bytes made (not 0). */
static __always_inline __u32 lowest_byte(__u64 mask)
{
	__u32 index = 0;
	if (!(mask & 0xffffffffULL)) {
		index += 4;
		mask >>= 32;
	}
	if (!(mask & 0xffffULL)) {
		index += 2;
		mask >>= 16;
	}
	if (!(mask & 0xffULL))
		index += 1;
	return index;
}

#define CT_EACH_BYTE(c) (0x0101010101010101ULL * (__u8)(c))

/*
 * The offset just past the first blank line ("\r\n\r\n") that starts in a window, or 0: eight
 * bytes a step. A step tests only for line feeds one and three bytes after each of its bytes;
 * the rare step that has such a pair tests for the carriage returns too.
 */
static __always_inline __u32 blank_line_end(const __u8 *window)
{
	const __u64 lf = CT_EACH_BYTE('\n'), cr = CT_EACH_BYTE('\r');
	__u64 word;
	__builtin_memcpy(&word, window, sizeof(word));
	__u64 word_lf = zero_bytes(word ^ lf);
	for (__u32 i = 0; i < CT_HEAD_WINDOW / 8; i++) {
		__u64 next = 0;
		if (i + 1 < CT_HEAD_WINDOW / 8)
			__builtin_memcpy(&next, window + 8 * (i + 1), sizeof(next));
		__u64 next_lf = zero_bytes(next ^ lf);
		__u64 at = ((word_lf >> 8) | (next_lf << 56)) & ((word_lf >> 24) | (next_lf << 40));
		if (at) {
			at &= zero_bytes(word ^ cr) & zero_bytes(((word >> 16) | (next << 48)) ^ cr);
			if (at)
				return 8 * i + lowest_byte(at) + 4;
		}
		word = next;
		word_lf = next_lf;
	}
	return 0;
}

/*
 * The offset just past the blank line that ends the head opening a segment, or 0 when none is
 * found. Global, so that the verifier checks its loops once rather than on every path that
 * reaches it; called only from the programs for long heads (on_packet), since a program that
 * calls a function of its own costs ~100 ns more a run.
 */
__noinline int head_end_in_segment(struct __sk_buff *skb, __u32 payload_offset, __u32 payload_len)
{
	__u32 zero = 0;
	__u8 *window = bpf_map_lookup_elem(&head_window, &zero);
	if (!window)
		return 0;
	for (__u32 i = 0; i < CT_HEAD_WINDOWS; i++) {
		__u32 start = i * (CT_HEAD_WINDOW - 8);
		if (start >= payload_len)
			return 0;
		__u32 left = payload_len - start;
		__u64 n = left < CT_HEAD_WINDOW ? left : CT_HEAD_WINDOW;
		/* A length older verifiers can bound (see copy_len). */
		__u64 minus_one = n - 1;
		barrier_var(minus_one);
		n = (minus_one & (CT_HEAD_WINDOW - 1)) + 1;
		if (bpf_skb_load_bytes(skb, payload_offset + start, window, n))
			return 0;
		/* Past n the window holds an earlier segment's bytes: no end there. */
		__u32 end = blank_line_end(window);
		if (end && end <= n)
			return start + end;
		if (n < CT_HEAD_WINDOW)
			return 0;
	}
	return 0;
}

/*
 * A response head longer than the capture, that ends within its first segment: its last
 * CT_HEAD_TAIL bytes replace the capture's end (ct_message_event.tail_at), where Node.js's
 * Connection and Keep-Alive fields stand behind the application's own. In the programs for long
 * heads only (on_packet).
 */
static __always_inline void keep_head_tail(const struct packet *p, struct message_slot *slot)
{
	if (!p->long_heads || p->payload_len <= CT_PAYLOAD_MAX || slot->captured != CT_PAYLOAD_MAX ||
	    !is_response_start((const char *)slot->head))
		return;
	int end = head_end_in_segment(p->skb, p->payload_offset, p->payload_len);
	if (end <= 0)
		return;
	if (end <= CT_PAYLOAD_MAX) {
		/* A body made it long (a file, a JSON document): the server's heads are short. */
		p->messages->short_heads = 1;
		return;
	}
	if (bpf_skb_load_bytes(p->skb, p->payload_offset + end - CT_HEAD_TAIL,
			       slot->head + CT_PAYLOAD_MAX - CT_HEAD_TAIL, CT_HEAD_TAIL))
		slot->captured = CT_PAYLOAD_MAX - CT_HEAD_TAIL; /* the helper zeroed them */
	else
		slot->tail_at = CT_PAYLOAD_MAX - CT_HEAD_TAIL;
}

/*
 * A segment that starts a message: count it, keep its head in the slot of its kind, and decide
 * whether it matters. The other kind's message before it is over: if it was to be written and
 * still waited for the rest of its head, it goes now.
 */
static __always_inline void continue_message(const struct packet *p);

/* A message of `kind` starts: counted, and its slot made ready for its head. */
static __always_inline struct message_slot *open_slot(struct message_state *m, __u8 kind,
						      __u64 ts_ns, __u32 segment_len,
						      __u8 direction, bool matters)
{
	struct message_slot *slot = &m->slots[kind & 1];
	slot->ts_ns = ts_ns;
	slot->previous_ns = m->last_start_ns;
	slot->segment_len = segment_len;
	slot->counts_before[CT_MESSAGE_REQUEST] = m->counts[CT_MESSAGE_REQUEST];
	slot->counts_before[CT_MESSAGE_RESPONSE] = m->counts[CT_MESSAGE_RESPONSE];
	m->counts[kind & 1]++;
	slot->direction = direction;
	slot->captured = 0;
	slot->head_complete = 0;
	slot->tail_at = 0;
	slot->status = matters ? SLOT_TO_WRITE : SLOT_HELD;
	m->current = kind;
	m->last_start_ns = ts_ns;
	return slot;
}

static __always_inline void start_message(const struct packet *p, __u64 silence_ns)
{
	struct message_state *m = p->messages;
	if (!m->request_direction)
		m->request_direction = request_direction_of(p);
	__u8 kind = p->direction == m->request_direction ? CT_MESSAGE_REQUEST : CT_MESSAGE_RESPONSE;
	/* An interim response is no answer, and the body it asked for is no new request. */
	if (kind == CT_MESSAGE_REQUEST && m->interim) {
		m->interim = 0;
		continue_message(p);
		return;
	}
	__u8 opening = kind == CT_MESSAGE_RESPONSE ? response_opening(p->skb, p->payload_offset)
						   : RESPONSE_FINAL;
	if (opening == RESPONSE_INTERIM) {
		m->interim = 1;
		return;
	}
	/* A switch of protocols ends the connection's HTTP: the request it answers is written with
	 * it (below), for the close to be told as the new protocol's. */
	bool switching = opening == RESPONSE_SWITCHING;
	if (switching) {
		m->switched = 1;
		if (m->slots[CT_MESSAGE_REQUEST].status == SLOT_HELD)
			m->slots[CT_MESSAGE_REQUEST].status = SLOT_TO_WRITE;
	}
	if (m->slots[m->current & 1].status == SLOT_TO_WRITE)
		write_packet_slot(p, m->current);

	bool closing = p->sk->state != TCP_ESTABLISHED;
	bool first = m->counts[kind & 1] == 0;
	bool matters;
	if (kind == CT_MESSAGE_REQUEST) {
		matters = closing || first || silence_ns >= idle_gap_ns;
		m->answer_pending = matters;
	} else {
		matters = closing || first || m->answer_pending || switching;
	}

	struct message_slot *slot =
		open_slot(m, kind, p->now, p->payload_len, p->direction, matters);
	__u64 n = p->payload_len < CT_PAYLOAD_MAX ? p->payload_len : CT_PAYLOAD_MAX;
	if (n > 0) {
		__u64 len = copy_len(n);
		if (!bpf_skb_load_bytes(p->skb, p->payload_offset, slot->head, len))
			slot->captured = len;
	}
	if (kind == CT_MESSAGE_RESPONSE)
		keep_head_tail(p, slot);
	note_head_end(slot);
	if (matters && slot->head_complete)
		write_packet_slot(p, kind);
}

/* A segment that continues the current message: only its head may still need bytes. */
static __always_inline void continue_message(const struct packet *p)
{
	__u8 kind = p->messages->current;
	struct message_slot *slot = &p->messages->slots[kind & 1];
	if (slot->head_complete || slot->status == SLOT_EMPTY || slot->status == SLOT_WRITTEN)
		return;
	continue_head(p->skb, slot, p->payload_offset, p->payload_len);
	if (slot->head_complete && slot->status == SLOT_TO_WRITE)
		write_packet_slot(p, kind);
}

/*
 * Has the segment been seen already? A retransmission passes the hooks again: it is neither new
 * activity nor a new message. One that also carries new bytes continues the message.
 */
static __always_inline bool seen_before(const struct packet *p, bool *overlaps)
{
	struct message_state *m = p->messages;
	__u32 index = (p->direction - 1) & 1;
	__u8 bit = 1 << index;
	__u32 end = p->seq + p->payload_len;
	*overlaps = false;
	if (m->seq_known & bit) {
		if ((__s32)(end - m->next_seq[index]) <= 0)
			return true;
		*overlaps = (__s32)(p->seq - m->next_seq[index]) < 0;
	}
	m->next_seq[index] = end;
	m->seq_known |= bit;
	return false;
}

/*
 * A listener that defers its accept (TCP_DEFER_ACCEPT: Apache's default AcceptFilter, nginx's
 * `listen ... deferred`) completes a connection only with its first data segment, and the hooks
 * see that segment on the listener, before the connection's own socket exists (so do they a
 * TCP Fast Open SYN's data). Its start is kept here by the connection's endpoints until the new
 * socket's first packet takes it: microseconds later in the same softirq for an accepted one.
 * Endpoints as a dual-stack socket shows them (IPv4 as ::ffff:a.b.c.d); not the namespace: two
 * namespaces would need the same endpoints within those microseconds.
 */
struct deferred_key {
	__u8 laddr[16];
	__u8 raddr[16];
	__u16 lport;
	__u16 rport;
};

struct deferred_start {
	__u64 ts_ns;
	__u32 next_seq;    /* the sequence number after the segment's last byte */
	__u32 segment_len;
	__u16 captured;
	__u8 pad[6];
	__u8 head[CT_PAYLOAD_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1024);
	__type(key, struct deferred_key);
	__type(value, struct deferred_start);
} deferred_starts SEC(".maps");

/* Where a segment's start is put together (one per CPU: too big for the stack). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct deferred_start);
} deferred_scratch SEC(".maps");

static __always_inline void mapped_address(__u8 to[16], const __u8 *ipv4)
{
	__builtin_memset(to, 0, 10);
	to[10] = 0xff;
	to[11] = 0xff;
	__builtin_memcpy(to + 12, ipv4, 4);
}

/* A data segment on a listener: kept for the socket its handshake completes (see above). */
static __always_inline void keep_deferred_start(struct __sk_buff *skb, const __u8 *ip,
						const __u8 *ip_end, const __u8 *tcp,
						__u32 payload_offset)
{
	struct deferred_key key = {};
	key.lport = ((__u16)tcp[2] << 8) | tcp[3];
	key.rport = ((__u16)tcp[0] << 8) | tcp[1];
	if (!port_matches(key.lport, key.rport))
		return;
	/* The bounds on_packet checked, again: the verifier has merged its two paths by now. */
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		if (ip + 20 > ip_end)
			return;
		mapped_address(key.laddr, ip + 16);
		mapped_address(key.raddr, ip + 12);
	} else {
		if (ip + 40 > ip_end)
			return;
		__builtin_memcpy(key.laddr, ip + 24, 16);
		__builtin_memcpy(key.raddr, ip + 8, 16);
	}
	__u32 zero = 0;
	struct deferred_start *start = bpf_map_lookup_elem(&deferred_scratch, &zero);
	if (!start)
		return;
	__u32 seq = ((__u32)tcp[4] << 24) | ((__u32)tcp[5] << 16) | ((__u32)tcp[6] << 8) | tcp[7];
	__u32 len = skb->len - payload_offset;
	/* A SYN's data begins one past its sequence number. */
	start->next_seq = seq + ((tcp[13] & CT_TCP_SYN) ? 1 : 0) + len;
	start->ts_ns = bpf_ktime_get_ns();
	start->segment_len = len;
	start->captured = 0;
	__u64 n = len < CT_PAYLOAD_MAX ? len : CT_PAYLOAD_MAX;
	if (n > 0 && !bpf_skb_load_bytes(skb, payload_offset, start->head, copy_len(n)))
		start->captured = copy_len(n);
	bpf_map_update_elem(&deferred_starts, &key, start, BPF_ANY);
}

/*
 * A server socket's first packet: the request that completed its handshake on a listener that
 * defers its accept, if one was kept, is its first message (as start_message would have read
 * it). HTTP/2 is not followed on such a socket: its client preface has passed unwalked.
 */
static __always_inline void take_deferred_start(const struct packet *p)
{
	struct ct_tuple tuple = {};
	tuple_from_bpf_sock(p->sk, &tuple);
	struct deferred_key key = {.lport = tuple.lport, .rport = tuple.rport};
	if (tuple.family == AF_INET) {
		mapped_address(key.laddr, tuple.laddr);
		mapped_address(key.raddr, tuple.raddr);
	} else {
		__builtin_memcpy(key.laddr, tuple.laddr, 16);
		__builtin_memcpy(key.raddr, tuple.raddr, 16);
	}
	struct deferred_start *start = bpf_map_lookup_elem(&deferred_starts, &key);
	if (!start)
		return;
	struct message_state *m = p->messages;
	struct sock_state *state = p->state;
	/* The connection was established by this segment: not before it. */
	__u64 ts = start->ts_ns > state->established_ns ? start->ts_ns : state->established_ns;
	m->request_direction = CT_DIR_IN;
	m->http2 = HTTP2_NOT;
	m->next_seq[CT_DIR_IN - 1] = start->next_seq;
	m->seq_known |= 1 << (CT_DIR_IN - 1);
	m->answer_pending = 1;
	struct message_slot *slot = open_slot(m, CT_MESSAGE_REQUEST, ts, start->segment_len,
					      CT_DIR_IN, true);
	slot->captured = start->captured <= CT_PAYLOAD_MAX ? start->captured : CT_PAYLOAD_MAX;
	__builtin_memcpy(slot->head, start->head, CT_PAYLOAD_MAX);
	note_head_end(slot);
	state->last_rx_ns = ts;
	state->last_direction = CT_DIR_IN;
	bpf_map_delete_elem(&deferred_starts, &key);
	if (slot->head_complete)
		write_packet_slot(p, CT_MESSAGE_REQUEST);
}

/* Frames walked in one segment at most: a segment with more loses the track of its direction. */
#define CT_HTTP2_FRAMES_PER_SEGMENT 32
#define CT_HTTP2_FRAME_HEADER_LEN 9
#define CT_HTTP2_PREFACE_LEN 24

/* Eight bytes as one word in memory order (compared in three loads, not byte by byte). */
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define CT_BYTE_AT(c, i) ((__u64)(__u8)(c) << (8 * (i)))
#else
#define CT_BYTE_AT(c, i) ((__u64)(__u8)(c) << (8 * (7 - (i))))
#endif
#define CT_WORD(a, b, c, d, e, f, g, h)                                                   \
	(CT_BYTE_AT(a, 0) | CT_BYTE_AT(b, 1) | CT_BYTE_AT(c, 2) | CT_BYTE_AT(d, 3) |        \
	 CT_BYTE_AT(e, 4) | CT_BYTE_AT(f, 5) | CT_BYTE_AT(g, 6) | CT_BYTE_AT(h, 7))

/* "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" (RFC 9113, 3.4), the client's first bytes. */
static __always_inline bool is_client_preface(const __u64 w[3])
{
	return w[0] == CT_WORD('P', 'R', 'I', ' ', '*', ' ', 'H', 'T') &&
	       w[1] == CT_WORD('T', 'P', '/', '2', '.', '0', '\r', '\n') &&
	       w[2] == CT_WORD('\r', '\n', 'S', 'M', '\r', '\n', '\r', '\n');
}

/* A SETTINGS frame header on stream 0 without ACK: how a server's preface begins. */
static __always_inline bool is_settings_header(const __u8 h[CT_HTTP2_FRAME_HEADER_LEN])
{
	__u32 length = ((__u32)h[0] << 16) | ((__u32)h[1] << 8) | h[2];
	return h[3] == CT_HTTP2_SETTINGS && h[4] == 0 && (h[5] | h[6] | h[7] | h[8]) == 0 &&
	       length % 6 == 0;
}

/* The same of a segment shorter than the client preface (read again, 9 bytes). */
static __always_inline bool opens_with_settings(const struct packet *p)
{
	__u8 h[CT_HTTP2_FRAME_HEADER_LEN];
	if (bpf_skb_load_bytes(p->skb, p->payload_offset, h, sizeof(h)))
		return false;
	return is_settings_header(h);
}

static __always_inline void lose_http2_track(struct http2_state *h2, __u8 direction)
{
	h2->flags |= direction == CT_DIR_IN ? CT_HTTP2_LOST_IN : CT_HTTP2_LOST_OUT;
	h2->directions[(direction - 1) & 1].walking = 0;
}

/* A client stream opened: its bit in the window, which slides (losing the oldest) if needed. */
static __always_inline void pending_open(struct http2_state *h2, __u32 stream_id)
{
	__u32 index = stream_id >> 1;
	if (!h2->pending)
		h2->pending_index = index; /* stream ids only grow: a fresh window starts here */
	__u32 offset = index - h2->pending_index;
	if (offset >= CT_HTTP2_PENDING_WINDOW) {
		__u32 shift = offset - (CT_HTTP2_PENDING_WINDOW - 1);
		if (shift >= CT_HTTP2_PENDING_WINDOW) {
			h2->pending = 0;
		} else {
			if (h2->pending & ((1ULL << shift) - 1))
				h2->flags |= CT_HTTP2_PENDING_OVERFLOW;
			h2->pending >>= shift;
		}
		if (shift >= CT_HTTP2_PENDING_WINDOW)
			h2->flags |= CT_HTTP2_PENDING_OVERFLOW;
		h2->pending_index += shift;
		offset = CT_HTTP2_PENDING_WINDOW - 1;
	}
	h2->pending |= 1ULL << (offset & (CT_HTTP2_PENDING_WINDOW - 1));
}

/* A client stream answered or reset: was it awaiting that (its bit in the window)? */
static __always_inline bool pending_close(struct http2_state *h2, __u32 stream_id)
{
	__u32 index = stream_id >> 1;
	if (index < h2->pending_index || index - h2->pending_index >= CT_HTTP2_PENDING_WINDOW)
		return false;
	__u64 bit = 1ULL << ((index - h2->pending_index) & (CT_HTTP2_PENDING_WINDOW - 1));
	if (!(h2->pending & bit))
		return false;
	h2->pending &= ~bit;
	return true;
}

/* Counts one frame of the packet's direction; writes it when it matters. */
static __always_inline void count_frame(const struct packet *p, struct http2_state *h2,
					const struct http2_frame *f, __u64 silence_ns)
{
	struct ct_http2_side *own = &h2->directions[(p->direction - 1) & 1].counts;
	bool from_client = p->direction == h2->client_direction;
	bool matters = false;
	if (f->type == CT_HTTP2_HEADERS && (f->stream_id & 1)) {
		/* Client streams only: a server's pushed streams are not followed. */
		if (from_client && f->stream_id > own->last_stream_id) {
			own->streams_opened++;
			own->last_stream_id = f->stream_id;
			pending_open(h2, f->stream_id);
			/* The first stream too, as an HTTP/1 socket's first exchange: its record tells
			 * the connection is HTTP/2 where no close or end record will (the portable
			 * programs' connections open at the end). */
			matters = own->streams_opened == 1 || silence_ns >= idle_gap_ns ||
				  h2->goaway_passed || p->sk->state != TCP_ESTABLISHED;
		} else if (!from_client && pending_close(h2, f->stream_id)) {
			own->streams_answered++;
		}
	} else if (f->type == CT_HTTP2_RST_STREAM) {
		own->rst_count++;
		own->rst_last_error = f->error_code;
		pending_close(h2, f->stream_id);
		matters = true;
	} else if (f->type == CT_HTTP2_GOAWAY) {
		own->goaway_count++;
		own->goaway_last_stream_id = f->last_stream_id;
		own->goaway_error = f->error_code;
		h2->goaway_passed = 1;
		matters = true;
	} else if (f->type == CT_HTTP2_PING && !(f->flags & CT_HTTP2_FLAG_ACK)) {
		own->ping_count++;
	} else if (f->type == CT_HTTP2_SETTINGS && !(f->flags & CT_HTTP2_FLAG_ACK)) {
		own->settings_count++;
	}
	if (matters && h2->client_direction) {
		struct ct_event head = {};
		packet_head(p, &head);
		head.ts_ns = p->now;
		write_http2(&head, p->state->role, h2, CT_HTTP2_FRAME, f, p->direction);
	}
}

/*
 * record --http2-names: the payload of a frame carrying a header block fragment, from `body` in
 * the segment. A bounded copy: a frame above CT_HTTP2_FRAGMENT_MAX or continuing into the next
 * segment is written as cut, without bytes, so that userspace stops decoding that direction.
 */
static __always_inline void copy_fragment(const struct packet *p, struct http2_direction *d,
					  const struct http2_frame *f, __u32 body)
{
	__u32 sequence = d->fragments++;
	struct ct_http2_fragment_event *event = reserve_event(sizeof(*event));
	if (!event)
		return; /* the gap in `sequence` tells userspace */
	__builtin_memset(event, 0, offsetof(struct ct_http2_fragment_event, payload));
	packet_head(p, &event->hdr);
	event->hdr.ts_ns = p->now;
	event->hdr.kind = CT_EV_HTTP2_FRAGMENT;
	event->hdr.size = sizeof(*event);
	event->sequence = sequence;
	event->stream_id = f->stream_id;
	event->frame_len = f->length;
	event->direction = p->direction;
	event->frame_type = f->type;
	event->frame_flags = f->flags;
	event->role = p->state->role;
	event->status = CT_HTTP2_FRAGMENT_CUT;
	__u32 n = f->length;
	if (n == 0) {
		event->status = CT_HTTP2_FRAGMENT_WHOLE;
	} else if (n <= CT_HTTP2_FRAGMENT_MAX && body <= p->payload_len &&
		   n <= p->payload_len - body) {
		/* In [1, CT_HTTP2_FRAGMENT_MAX] for the verifier, and n itself. */
		__u32 size = ((n - 1) & (CT_HTTP2_FRAGMENT_MAX - 1)) + 1;
		if (!bpf_skb_load_bytes(p->skb, p->payload_offset + body, event->payload, size)) {
			event->captured = size;
			event->status = CT_HTTP2_FRAGMENT_WHOLE;
		}
	}
	submit_event(event, sizeof(*event));
}

/*
 * Walks the frame headers of a segment from `start` (its first byte not seen before), after the
 * rest of a frame begun in an earlier segment. A frame header, or the payload of a GOAWAY or
 * RST_STREAM, split across segments loses the track of the direction: never a guess.
 */
static __always_inline void walk_frames(const struct packet *p, struct http2_state *h2,
					__u32 start, __u64 silence_ns)
{
	struct http2_direction *d = &h2->directions[(p->direction - 1) & 1];
	__u32 len = p->payload_len;
	__u32 pos = start + d->skip;
	d->counts.last_frame_ns = p->now;
	for (int i = 0; i < CT_HTTP2_FRAMES_PER_SEGMENT; i++) {
		if (pos >= len)
			break;
		__u8 h[CT_HTTP2_FRAME_HEADER_LEN];
		if (len - pos < sizeof(h) ||
		    bpf_skb_load_bytes(p->skb, p->payload_offset + pos, h, sizeof(h))) {
			lose_http2_track(h2, p->direction);
			return;
		}
		struct http2_frame f = {
			.length = ((__u32)h[0] << 16) | ((__u32)h[1] << 8) | h[2],
			.type = h[3],
			.flags = h[4],
			.stream_id = (((__u32)h[5] << 24) | ((__u32)h[6] << 16) | ((__u32)h[7] << 8) |
				      h[8]) & 0x7fffffff,
		};
		__u32 body = pos + sizeof(h);
		if (f.type == CT_HTTP2_GOAWAY || f.type == CT_HTTP2_RST_STREAM) {
			__u8 b[8];
			int failed = f.type == CT_HTTP2_GOAWAY
					     ? (len - body < 8 ||
						bpf_skb_load_bytes(p->skb, p->payload_offset + body, b, 8))
					     : (len - body < 4 ||
						bpf_skb_load_bytes(p->skb, p->payload_offset + body, b, 4));
			if (failed) {
				lose_http2_track(h2, p->direction);
				return;
			}
			__u32 first = ((__u32)b[0] << 24) | ((__u32)b[1] << 16) | ((__u32)b[2] << 8) | b[3];
			if (f.type == CT_HTTP2_GOAWAY) {
				f.last_stream_id = first & 0x7fffffff;
				f.error_code = ((__u32)b[4] << 24) | ((__u32)b[5] << 16) |
					       ((__u32)b[6] << 8) | b[7];
			} else {
				f.error_code = first;
			}
		}
		count_frame(p, h2, &f, silence_ns);
		if (copy_http2_fragments &&
		    (f.type == CT_HTTP2_HEADERS || f.type == CT_HTTP2_CONTINUATION ||
		     f.type == CT_HTTP2_PUSH_PROMISE))
			copy_fragment(p, d, &f, body);
		pos = body + f.length;
	}
	if (pos < len) {
		lose_http2_track(h2, p->direction);
		return;
	}
	d->skip = pos - len;
}

/*
 * The first payload of a direction on a socket seen from its opening: the client preface makes
 * it HTTP/2 (its frames follow the preface's 24 bytes); the other direction must open with a
 * SETTINGS frame, the server's preface, which may also come first (followed until the client's
 * direction opens). Anything else drops the state. Returns the state, and in *start where the
 * frames begin; NULL when the socket is not HTTP/2.
 */
static __always_inline struct http2_state *http2_stream_start(const struct packet *p,
							      __u32 *start)
{
	struct message_state *m = p->messages;
	struct bpf_sock *sk = (struct bpf_sock *)p->sk;
	struct http2_state *h2 =
		m->http2 == HTTP2_FOLLOWED ? bpf_sk_storage_get(&http2_states, sk, NULL, 0) : NULL;
	__u64 first[CT_HTTP2_PREFACE_LEN / 8];
	bool whole = !bpf_skb_load_bytes(p->skb, p->payload_offset, first, sizeof(first));
	bool preface = whole && is_client_preface(first);
	/* A server preface needs the client's, seen or still to come; never two of them. Its
	 * header is in `first` unless the segment is shorter. */
	bool server_preface =
		!preface && (!h2 || h2->client_direction) &&
		(whole ? is_settings_header((const __u8 *)first) : opens_with_settings(p));
	if (!preface && !server_preface) {
		if (h2)
			bpf_sk_storage_delete(&http2_states, sk);
		/* Never looked at again: HTTP/1 pays this once per socket. */
		m->http2 = HTTP2_NOT;
		return NULL;
	}
	if (!h2) {
		h2 = bpf_sk_storage_get(&http2_states, sk, NULL, BPF_SK_STORAGE_GET_F_CREATE);
		m->http2 = h2 ? HTTP2_FOLLOWED : HTTP2_NOT;
		if (!h2)
			return NULL;
	}
	if (preface) {
		h2->client_direction = p->direction;
		*start = CT_HTTP2_PREFACE_LEN;
	}
	h2->directions[(p->direction - 1) & 1].walking = 1;
	return h2;
}

/*
 * A segment of a socket that may speak HTTP/2: its frames are followed while its direction's
 * bytes come in order (`expected`: the sequence number after the last byte seen).
 */
static __always_inline void on_http2_payload(const struct packet *p, bool stream_start,
					     __u32 expected, __u64 silence_ns)
{
	__u32 start = 0;
	struct http2_state *h2;
	if (stream_start) {
		h2 = http2_stream_start(p, &start);
		if (!h2)
			return;
	} else {
		h2 = bpf_sk_storage_get(&http2_states, (struct bpf_sock *)p->sk, NULL, 0);
		if (!h2 || !h2->directions[(p->direction - 1) & 1].walking)
			return;
		if (p->seq != expected) {
			/* A gap: bytes this hook did not see (not in order) cannot be walked. */
			if ((__s32)(p->seq - expected) > 0) {
				lose_http2_track(h2, p->direction);
				return;
			}
			start = expected - p->seq; /* a retransmission carrying new bytes too */
		}
	}
	walk_frames(p, h2, start, silence_ns);
}

/*
 * A segment that is one whole TLS record carrying no HTTP message: an alert (the close_notify a
 * side sends as it closes a TLS connection), or a TLS 1.3 record too short for one. It is no
 * activity: the idle before a close is the exchange's. Only short segments are looked at, which
 * few HTTP messages are; one that started a message is read from its slot's head, already
 * copied (a keep-alive request costs no copy more). Userspace tells such messages apart the same
 * way (http::MessageKind::TlsControl).
 */
static __always_inline bool is_tls_control(const struct packet *p, bool started)
{
	if (p->payload_len < CT_TLS_RECORD_HEADER_LEN ||
	    p->payload_len > CT_TLS_RECORD_HEADER_LEN + CT_TLS_LONGEST_ALERT)
		return false;
	__u8 h[CT_TLS_RECORD_HEADER_LEN];
	const struct message_slot *slot = &p->messages->slots[p->messages->current & 1];
	if (started && slot->ts_ns == p->now && slot->captured >= sizeof(h))
		__builtin_memcpy(h, slot->head, sizeof(h));
	else if (bpf_skb_load_bytes(p->skb, p->payload_offset, h, sizeof(h)))
		return false;
	__u32 len = ((__u32)h[3] << 8) | h[4];
	if (h[1] != 3 || h[2] > 4 || p->payload_len != sizeof(h) + len)
		return false;
	return h[0] == CT_TLS_ALERT ||
	       (h[0] == CT_TLS_APPLICATION_DATA && len <= CT_TLS_LONGEST_CONTROL);
}

/*
 * A TLS alert right after this side's own message (a server's close_notify after its response):
 * the close it begins matters, so it is written at once. It is counted as a message of its
 * direction's kind, as userspace counts every record, but leaves the slots (the exchange it
 * follows) and the previous message's start alone: it is no activity.
 */
static __always_inline void write_tls_alert(const struct packet *p)
{
	struct message_state *m = p->messages;
	if (!m->request_direction)
		m->request_direction = request_direction_of(p);
	__u8 kind = p->direction == m->request_direction ? CT_MESSAGE_REQUEST : CT_MESSAGE_RESPONSE;
	struct ct_message_event *event = reserve_event(sizeof(*event));
	if (event) {
		__builtin_memset(event, 0, sizeof(*event));
		packet_head(p, &event->hdr);
		event->hdr.ts_ns = p->now;
		event->hdr.kind = CT_EV_MESSAGE;
		event->hdr.size = sizeof(*event);
		event->previous_ns = m->last_start_ns;
		event->segment_len = p->payload_len;
		event->requests = m->counts[CT_MESSAGE_REQUEST];
		event->responses = m->counts[CT_MESSAGE_RESPONSE];
		__u64 n = p->payload_len < CT_PAYLOAD_MAX ? p->payload_len : CT_PAYLOAD_MAX;
		if (n > 0 && !bpf_skb_load_bytes(p->skb, p->payload_offset, event->payload,
						 copy_len(n)))
			event->captured = copy_len(n);
		event->direction = p->direction;
		event->role = p->state->role;
		event->kind = kind;
		submit_event(event, sizeof(*event));
	}
	m->counts[kind & 1]++;
}

static __always_inline void note_payload_time(struct sock_state *state, const struct packet *p)
{
	if (p->direction == CT_DIR_IN)
		state->last_rx_ns = p->now;
	else
		state->last_tx_ns = p->now;
}

static __always_inline void on_payload(const struct packet *p)
{
	struct message_state *m = p->messages;
	__u32 index = (p->direction - 1) & 1;
	/* Read before seen_before moves them on. */
	bool stream_start = !(m->seq_known & (1 << index));
	__u32 expected = m->next_seq[index];
	bool overlaps;
	if (seen_before(p, &overlaps))
		return;
	struct sock_state *state = p->state;
	/* After a switch of protocols the bytes are the new protocol's (WebSocket frames): no
	 * message starts. A 101 still waiting for the rest of its head (a frame in its segment)
	 * takes the bytes that follow it, and goes when the other side speaks. */
	if (m->switched) {
		struct message_slot *slot = &m->slots[m->current & 1];
		if (slot->status == SLOT_TO_WRITE) {
			if (p->direction == slot->direction)
				continue_message(p);
			else
				write_packet_slot(p, m->current);
		}
		note_payload_time(state, p);
		return;
	}
	__u64 last_payload = state->last_rx_ns > state->last_tx_ns ? state->last_rx_ns
								    : state->last_tx_ns;
	__u64 silence_ns = last_payload && p->now > last_payload ? p->now - last_payload : 0;
	/* Only sockets seen from their opening (a socket met mid-life is mid-stream too), decided
	 * by a socket's first payload: past it, an HTTP/1 socket's packets test one byte. */
	__u8 http2 = m->http2;
	if (__builtin_expect(http2 == HTTP2_FOLLOWED ||
				     (http2 == HTTP2_UNDECIDED && stream_start &&
				      state->role != CT_ROLE_UNKNOWN),
			     0))
		on_http2_payload(p, stream_start, expected, silence_ns);

	bool same_direction = state->last_direction == p->direction;
	state->last_direction = p->direction;
	/* Responses to pipelined requests follow each other in one direction, each in its own
	 * segment: a further response opens with "HTTP/". */
	bool response_direction =
		p->messages->request_direction && p->direction != p->messages->request_direction;
	bool started = !overlaps && !(same_direction && !(response_direction &&
							  opens_response(p->skb, p->payload_offset)));
	bool tls_control = !started && is_tls_control(p, false);
	if (started)
		start_message(p, silence_ns);
	else if (tls_control && !overlaps)
		write_tls_alert(p);
	else
		continue_message(p);
	if (started)
		tls_control = is_tls_control(p, true);
	/* After the message's logic, which reads its silence from the clocks before: a TLS alert is
	 * no activity (is_tls_control). */
	if (!tls_control)
		note_payload_time(state, p);
}

/* The programs for a long response head, by direction (filled by the loader). */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} long_head_ingress SEC(".maps"), long_head_egress SEC(".maps");

/*
 * Does the segment open a response longer than the capture? Then its head may end past it,
 * unless the socket's earlier long response was long for its body (short_heads).
 */
static __always_inline bool opens_long_response(const struct packet *p)
{
	__u8 request_direction = p->messages->request_direction;
	return p->payload_len > CT_PAYLOAD_MAX && !p->messages->short_heads && request_direction &&
	       p->direction != request_direction && p->state->last_direction != p->direction &&
	       opens_response(p->skb, p->payload_offset);
}

/*
 * Every packet of a tracked socket passes here: update the last-payload clocks, count messages,
 * and write the heads of those that matter (see ct_message_event). A packet that opens a
 * response longer than the capture goes, by tail call, to the same logic in the programs for
 * long heads (`long_heads`), which also keep the end of such a head (keep_head_tail); a failed
 * tail call leaves it here, its head's first bytes kept.
 */
static __always_inline void on_packet(struct __sk_buff *skb, __u8 direction, bool long_heads)
{
	struct bpf_sock *sk = skb->sk;
	if (!recording || !sk)
		return;
	sk = bpf_sk_fullsock(sk);
	if (!sk || sk->protocol != IPPROTO_TCP)
		return;
	/*
	 * The IP and TCP headers are read in place: the stack itself needs them in the linear
	 * data (skb->data is the network header in these hooks), so a helper call per header,
	 * which each packet paid twice, is not needed. Only the payload is copied, by helper.
	 */
	const __u8 *data = (const __u8 *)(long)skb->data;
	const __u8 *data_end = (const __u8 *)(long)skb->data_end;
	__u32 ip_header_len;
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		if (data + 20 > data_end)
			return;
		ip_header_len = (data[0] & 0x0f) * 4;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		if (data + 40 > data_end || data[6] != IPPROTO_TCP)
			return;
		ip_header_len = 40;
	} else {
		return;
	}
	/* Sequence number (byte 4), data offset (12), flags (13). */
	const __u8 *tcp = data + ip_header_len;
	if (tcp + 14 > data_end)
		return;
	__u32 payload_offset = ip_header_len + (tcp[12] >> 4) * 4;
	bool has_payload = skb->len > payload_offset;
	bool closes = (tcp[13] & (CT_TCP_FIN | CT_TCP_RST)) != 0;
	/* A bare ACK needs nothing of the socket: it leaves before the storage lookup (the
	 * pointer chase socket -> storage -> element, the programs' cache misses). */
	if (!has_payload && !closes)
		return;

	/* A socket neither tracked nor on a filtered port (the host's other traffic) leaves here,
	 * and so does an untracked socket's FIN or RST: a close starts no tracking. */
#ifdef CT_NO_KERNEL_BTF
	/* The entry at a linked socket's address is its own while the socket lives, closed or
	 * not: its last packets (FIN, RST) still find it. */
	struct sock_link *link = bpf_sk_storage_get(&sock_links, sk, NULL, 0);
	struct sock_state *state = link ? bpf_map_lookup_elem(&sock_states, &link->address) : NULL;
#else
	struct sock_state *state = bpf_sk_storage_get(&sock_states, sk, NULL, 0);
#endif
	if (!state && has_payload && sk->state == TCP_LISTEN && direction == CT_DIR_IN) {
		keep_deferred_start(skb, data, data_end, tcp, payload_offset);
		return;
	}
	if (!state && (!has_payload || !is_midlife_state(sk->state) ||
		       !port_matches(sk->src_port, bpf_ntohs(sk->dst_port))))
		return;

	__u64 now = bpf_ktime_get_ns();
	if (!state) {
		/* Open before recording: start tracking it now if the filters select it. */
#ifdef CT_NO_KERNEL_BTF
		if (!link) {
			link = bpf_sk_storage_get(&sock_links, sk, NULL, BPF_SK_STORAGE_GET_F_CREATE);
			if (!link)
				return;
			link->address = (__u64)sk; /* an address in a map: allowed to privileged loaders */
		}
		state = find_state((const struct sock *)link->address, 0);
		/*
		 * The cgroup filter is where these programs attach; the namespace cannot be read here
		 * without kernel BTF, so with --netns a socket waits for its next state change. The
		 * fresh state's role and namespace are unknown (0).
		 */
		if (!state && !filter_netns)
			state = create_state_at(&link->address, now);
		if (!state)
			return;
#else
		struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);
		if (!tp || !sock_selected((struct sock *)tp))
			return;
		state = new_state((struct sock *)tp, CT_ROLE_UNKNOWN, now);
		if (!state)
			return;
#endif
	}

	struct packet p = {
		.skb = skb,
		.sk = sk,
		.state = state,
		.now = now,
		.payload_offset = payload_offset,
		.payload_len = has_payload ? skb->len - payload_offset : 0,
		.seq = ((__u32)tcp[4] << 24) | ((__u32)tcp[5] << 16) | ((__u32)tcp[6] << 8) | tcp[7],
		.direction = direction,
		.long_heads = long_heads,
	};
#ifdef CT_NO_KERNEL_BTF
	p.messages = &link->messages;
#else
	p.messages = &state->messages;
#endif
	if (!long_heads && has_payload && opens_long_response(&p)) {
		if (direction == CT_DIR_OUT)
			bpf_tail_call(skb, &long_head_egress, 0);
		else
			bpf_tail_call(skb, &long_head_ingress, 0);
	}
	if (!p.messages->seq_known && state->role == CT_ROLE_SERVER)
		take_deferred_start(&p);
	if (has_payload)
		on_payload(&p);
	if (closes) {
		/* Its first FIN or RST, either way. */
		struct ct_event head = {};
		packet_head(&p, &head);
		write_held(&head, state->role, p.messages);
#ifdef CT_NO_KERNEL_BTF
		/* The counts of an HTTP/2 connection, at each of its FIN and RST packets (its
		 * state program cannot reach socket storage): the reader keeps the latest. */
		struct http2_state *h2 =
			p.messages->http2 == HTTP2_FOLLOWED
				? bpf_sk_storage_get(&http2_states, sk, NULL, 0)
				: NULL;
		if (h2 && h2->client_direction) {
			head.ts_ns = now;
			write_http2(&head, state->role, h2, CT_HTTP2_CLOSE, NULL, 0);
		}
#endif
	}
}

SEC("cgroup_skb/ingress")
int on_ingress(struct __sk_buff *skb)
{
	on_packet(skb, CT_DIR_IN, false);
	return 1; /* observe only: always let the packet through */
}

SEC("cgroup_skb/egress")
int on_egress(struct __sk_buff *skb)
{
	on_packet(skb, CT_DIR_OUT, false);
	return 1;
}

/* Not attached: reached from the above by tail call (long_head_ingress, long_head_egress). */
SEC("cgroup_skb/ingress")
int on_ingress_long_head(struct __sk_buff *skb)
{
	on_packet(skb, CT_DIR_IN, true);
	return 1;
}

SEC("cgroup_skb/egress")
int on_egress_long_head(struct __sk_buff *skb)
{
	on_packet(skb, CT_DIR_OUT, true);
	return 1;
}
