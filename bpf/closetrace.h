/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The one contract between the kernel programs and userspace: event records
 * written to the ring buffer. Fixed-width fields only, nothing kernel-internal,
 * so that C++ can decode them without kernel headers.
 */
#ifndef CLOSETRACE_H
#define CLOSETRACE_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

/* Bumped whenever a record layout below, or the values a field may hold, changes. The programs
 * carry it (abi_version in their read-only data) and the loader refuses programs built with
 * another version than its own. */
#define CT_ABI_VERSION 8

/* Bytes of payload captured from a message head (reassembled across segments) or a reset's
 * trigger: enough for the request line and the first headers, where Connection and User-Agent
 * usually stand. */
#define CT_PAYLOAD_MAX 256
/* A response head longer than CT_PAYLOAD_MAX keeps its last bytes in the capture's end (see
 * ct_message_event.tail_at): Node.js writes Connection and Keep-Alive after every field the
 * application set, often hundreds of bytes in. */
#define CT_HEAD_TAIL 96
/* Ports the in-kernel filter can hold (local or remote port matches). */
#define CT_MAX_PORTS 16
#define CT_COMM_LEN 16

/* Per-CPU counters the loader sums (index into the `counters` map). */
enum ct_counter {
	CT_COUNTER_EMITTED = 0, /* records handed to the ring buffer */
	CT_COUNTER_LOST = 1,    /* records dropped: ring buffer full */
	CT_COUNTER_MAX = 2,
};

/*
 * TLS records (RFC 8446 section 5.1: content type, legacy version 3.x, 16-bit length) that carry
 * no HTTP message: alerts (a close_notify as a side closes), and TLS 1.3 records too short for
 * one. The programs leave the idle clocks alone for a segment of one such record; userspace
 * takes such bytes for neither request nor response.
 */
#define CT_TLS_RECORD_HEADER_LEN 5
#define CT_TLS_ALERT 21
#define CT_TLS_APPLICATION_DATA 23
/* The longest TLS 1.3 record that holds no HTTP message: an encrypted alert (2 bytes, the inner
 * content type and a 16-byte tag: 19) or key update (22). The smallest HTTP message sealed is
 * longer: an HTTP/2 frame header alone makes 26, an HTTP/1 request line 35. */
#define CT_TLS_LONGEST_CONTROL 22
/* The longest alert record: TLS 1.2 with a CBC cipher and a 48-byte MAC. */
#define CT_TLS_LONGEST_ALERT 80

/* Reset reason unknown: the kernel does not expose enum sk_rst_reason (< 6.10). */
#define CT_RST_REASON_UNKNOWN (-1)

enum ct_event_kind {
	CT_EV_STATE = 1,          /* TCP state change of a tracked socket (not to SYN_SENT, nor
				   * FIN_WAIT1 -> FIN_WAIT2: docs/trace-format.md) */
	CT_EV_RESET_SENT = 2,     /* this host sent RST (tcp_send_reset) */
	CT_EV_RESET_RECEIVED = 3, /* an RST was processed on a tracked socket */
	CT_EV_MESSAGE = 4,        /* the head of a message that matters (see ct_message_event) */
	CT_EV_HTTP2 = 5,          /* an HTTP/2 frame that matters, or the counts at a close */
	CT_EV_HTTP2_FRAGMENT = 6, /* record --http2-names: a header block fragment */
};

/* What the kernel tells apart on a socket: requests come from the client (by the socket's role);
 * on a socket first seen mid-life, from the side that spoke first, unless its first message
 * opens with "HTTP/" (a response). */
enum ct_message_kind {
	CT_MESSAGE_REQUEST = 0,
	CT_MESSAGE_RESPONSE = 1,
};

enum ct_message_flag {
	/* Written when the connection began to close, or when the recording ended with it open,
	 * not when the message passed: the last message of its kind, held in the socket's state
	 * because nothing marked it then. */
	CT_MESSAGE_HELD = 0x1,
};

/* Who opened the connection, from this host's point of view. */
enum ct_role {
	CT_ROLE_UNKNOWN = 0, /* first seen mid-life (open before recording) */
	CT_ROLE_SERVER = 1,  /* passive open: SYN_RECV -> ESTABLISHED */
	CT_ROLE_CLIENT = 2,  /* active open: SYN_SENT -> ESTABLISHED */
};

/* Where a socket's owning process (pid, comm) was seen: a system call of that process. */
enum ct_owner_source {
	CT_OWNER_NONE = 0,
	CT_OWNER_CONNECT = 1, /* connect() */
	CT_OWNER_CLOSE = 2,   /* close() or shutdown() that sent our FIN */
};

/* What a state change tells of the process that made it (ct_state_event.flags). */
enum ct_state_flag {
	CT_STATE_BY_OWNER = 0x1,      /* made by the owning process closing the socket */
	CT_STATE_OWNER_EXITING = 0x2, /* ... while that process was exiting (crash, kill, exit) */
};

enum ct_direction {
	CT_DIR_IN = 1,  /* received by this host */
	CT_DIR_OUT = 2, /* sent by this host */
};

/* TCP flag bits as on the wire (byte 13 of the TCP header). */
enum ct_tcp_flag {
	CT_TCP_FIN = 0x01,
	CT_TCP_SYN = 0x02,
	CT_TCP_RST = 0x04,
	CT_TCP_PSH = 0x08,
	CT_TCP_ACK = 0x10,
};

/* Endpoints from this host's point of view. IPv4 uses the first 4 bytes. */
struct ct_tuple {
	__u8 laddr[16];
	__u8 raddr[16];
	__u16 lport; /* host byte order */
	__u16 rport; /* host byte order */
	__u8 family; /* AF_INET (2) or AF_INET6 (10) */
	__u8 pad[3];
};

/* Common head of every record. */
struct ct_event {
	__u64 ts_ns;   /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u64 cookie;  /* socket cookie, stable across time-wait; 0 when no socket */
	__u32 netns;   /* network namespace inode */
	__u16 kind;    /* enum ct_event_kind */
	__u16 size;    /* bytes of the whole record */
	struct ct_tuple tuple;
};

/* Counters and clocks read from the socket at the time of an event. */
struct ct_sock_snapshot {
	__u64 last_rx_ns;   /* last payload received (TLS alerts aside), monotonic; 0 unknown */
	__u64 last_tx_ns;   /* last payload sent (TLS alerts aside), monotonic; 0 unknown */
	__u64 bytes_in;     /* tcp_sock.bytes_received */
	__u64 bytes_out;    /* tcp_sock.bytes_acked */
	__u32 segs_in;
	__u32 segs_out;
	__u32 unacked_out;  /* snd_nxt - snd_una: sent, not yet acknowledged */
	__u32 unread_in;    /* rcv_nxt - copied_seq: received, not yet read */
};

struct ct_state_event {
	struct ct_event hdr;
	struct ct_sock_snapshot snap;
	__u64 established_ns; /* 0 when established before recording */
	__u64 cgroup_id;      /* the socket's cgroup v2 id (inode of its directory); 0 unknown */
	__u32 pid;            /* task running when the state changed (best effort) */
	__u8 old_state;       /* TCP_* as in include/net/tcp_states.h */
	__u8 new_state;
	__u8 role;            /* enum ct_role */
	__u8 owner_from;      /* enum ct_owner_source: where pid and comm were seen */
	char comm[CT_COMM_LEN];
	__u8 flags;           /* enum ct_state_flag */
	__u8 pad[7];
};

struct ct_reset_event {
	struct ct_event hdr;
	struct ct_sock_snapshot snap; /* zero when the socket is not a full socket */
	__s32 reason;          /* kernel enum sk_rst_reason value, or CT_RST_REASON_UNKNOWN */
	__u32 payload_len;     /* trigger segment's payload length on the wire */
	__u16 captured;        /* payload bytes captured below (<= CT_PAYLOAD_MAX) */
	__u8 trigger_flags;    /* TCP flags of the segment that triggered it; 0 when none */
	__u8 sk_state;         /* socket state (TCP_TIME_WAIT for a time-wait socket); 0 no socket */
	__u8 role;
	__u8 pad[7];
	__u8 payload[CT_PAYLOAD_MAX];
};

/*
 * A message that matters: a socket's first request and response, a request after an idle gap
 * (and the responses that answer it), any message while the socket is closing, and, when it
 * begins to close, the last request and response if they were not written yet. Every other
 * message is only counted: each record carries the counts of both kinds before it, so those
 * between two records are known. Retransmitted segments are not counted again. hdr.ts_ns is
 * when the message started.
 */
struct ct_message_event {
	struct ct_event hdr;
	__u64 previous_ns;     /* when the previous message (either kind) started; 0 none */
	__u32 segment_len;     /* payload bytes in the segment that started the message */
	__u32 requests;        /* requests before it on the socket */
	__u32 responses;       /* responses before it (interim 1xx responses not counted) */
	__u16 captured;        /* head bytes below, from one or more segments */
	__u8 direction;        /* enum ct_direction */
	__u8 role;
	__u8 kind;             /* enum ct_message_kind */
	__u8 flags;            /* enum ct_message_flag */
	/* 0: payload holds the head's first `captured` bytes. Otherwise the head outgrew it and
	 * ended within its first segment: payload[0, tail_at) are its first bytes and
	 * payload[tail_at, CT_PAYLOAD_MAX) its last CT_HEAD_TAIL, up to the blank line that ends
	 * it (tail_at = CT_PAYLOAD_MAX - CT_HEAD_TAIL). */
	__u8 tail_at;
	__u8 pad[5];
	__u8 payload[CT_PAYLOAD_MAX];
};

/* HTTP/2 over cleartext (h2c with prior knowledge): what ct_http2_event reports. */
enum ct_http2_record {
	CT_HTTP2_FRAME = 1, /* a frame that matters: GOAWAY, RST_STREAM, a stream opened after an
			     * idle gap, after a GOAWAY or while the connection closes */
	CT_HTTP2_CLOSE = 2, /* the connection's counts, written at its close */
	CT_HTTP2_END = 3,   /* the counts of a connection still open when the recording ended */
};

/* Frame types the kernel acts on (RFC 9113, section 6). */
enum ct_http2_frame_type {
	CT_HTTP2_HEADERS = 0x1,
	CT_HTTP2_RST_STREAM = 0x3,
	CT_HTTP2_SETTINGS = 0x4,
	CT_HTTP2_PUSH_PROMISE = 0x5,
	CT_HTTP2_PING = 0x6,
	CT_HTTP2_GOAWAY = 0x7,
	CT_HTTP2_CONTINUATION = 0x9,
};

/* The ACK flag of SETTINGS and PING frames: an answer, not counted as the side's own. */
#define CT_HTTP2_FLAG_ACK 0x1

enum ct_http2_flag {
	/* The frames of that direction are no longer followed: a gap in the byte stream, a frame
	 * header or a GOAWAY/RST_STREAM payload split across segments, or more frames in one
	 * segment than the kernel walks. Counts of that direction stop there. */
	CT_HTTP2_LOST_IN = 0x1,
	CT_HTTP2_LOST_OUT = 0x2,
	/* More than CT_HTTP2_PENDING_WINDOW streams were open at once: the oldest left the window
	 * unanswered, and `pending` no longer names every stream still open. */
	CT_HTTP2_PENDING_OVERFLOW = 0x4,
};

/* Client streams (odd ids) whose answer is awaited, as a bitmap from a base stream id. */
#define CT_HTTP2_PENDING_WINDOW 64

/* What one side of an HTTP/2 connection sent. */
struct ct_http2_side {
	__u64 last_frame_ns;         /* the latest segment carrying its frames; 0 none */
	__u32 streams_opened;        /* streams it opened (HEADERS on a new client stream) */
	__u32 streams_answered;      /* streams of the other side it answered (its first HEADERS) */
	__u32 last_stream_id;        /* the highest stream id it opened; 0 none */
	__u32 goaway_count;          /* GOAWAY frames it sent */
	__u32 goaway_last_stream_id; /* of its latest GOAWAY */
	__u32 goaway_error;          /* of its latest GOAWAY */
	__u32 rst_count;             /* RST_STREAM frames it sent */
	__u32 rst_last_error;        /* of its latest RST_STREAM */
	__u32 ping_count;            /* PING frames it sent, acknowledgements not counted */
	__u32 settings_count;        /* SETTINGS frames it sent, acknowledgements not counted */
};

struct ct_http2_event {
	struct ct_event hdr;
	struct ct_http2_side sides[2]; /* by direction - 1: [0] the peer's frames, [1] this host's */
	__u64 pending;           /* bit i: stream pending_base + 2 i opened, neither answered nor reset */
	__u32 pending_base;      /* an odd stream id */
	__u32 stream_id;         /* CT_HTTP2_FRAME: the frame's stream */
	__u32 error_code;        /* CT_HTTP2_FRAME: a GOAWAY's or RST_STREAM's error code */
	__u32 frame_len;         /* CT_HTTP2_FRAME: the frame's payload length */
	__u8 record;             /* enum ct_http2_record */
	__u8 frame_type;         /* CT_HTTP2_FRAME: enum ct_http2_frame_type */
	__u8 frame_flags;
	__u8 direction;          /* CT_HTTP2_FRAME: enum ct_direction */
	__u8 client_direction;   /* the direction of the client preface: CT_DIR_IN on a server */
	__u8 flags;              /* enum ct_http2_flag */
	__u8 role;
	__u8 pad;
	/* Bytes of the peer's frame under way still to come: 0 means the peer's next segment opens
	 * with a frame header (read from a reset's trigger once the socket is gone). */
	__u32 in_skip;
};

/* Payload bytes of a header block fragment copied whole; a longer frame is not copied. */
#define CT_HTTP2_FRAGMENT_MAX 1024

enum ct_http2_fragment_status {
	CT_HTTP2_FRAGMENT_WHOLE = 0, /* the frame's whole payload is below */
	/* Not copied: longer than CT_HTTP2_FRAGMENT_MAX, or its payload continues in the next
	 * segment. The direction's later blocks cannot be decoded (HPACK's dynamic table). */
	CT_HTTP2_FRAGMENT_CUT = 1,
};

/*
 * record --http2-names: the payload of a HEADERS, CONTINUATION or PUSH_PROMISE frame (a header
 * block fragment, RFC 9113 section 4.3), written for each one the kernel walks, both ways, so
 * that userspace can decode the connection's header blocks in order. `sequence` numbers them
 * per direction: a gap is a record the ring buffer could not take.
 */
struct ct_http2_fragment_event {
	struct ct_event hdr;
	__u32 sequence;   /* fragments of its direction before it */
	__u32 stream_id;
	__u32 frame_len;  /* the frame's payload length */
	__u16 captured;   /* bytes below: frame_len when whole, else 0 */
	__u8 direction;   /* enum ct_direction */
	__u8 frame_type;  /* enum ct_http2_frame_type */
	__u8 frame_flags;
	__u8 status;      /* enum ct_http2_fragment_status */
	__u8 role;
	__u8 pad[5];
	__u8 payload[CT_HTTP2_FRAGMENT_MAX];
};

#endif /* CLOSETRACE_H */
