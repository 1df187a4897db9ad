// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* The floor of closetrace's per-packet cost (bench/run keepalive, variant `hooks`): two
 * cgroup_skb programs that let every packet through at once, attached where the recorder
 * attaches its own. What they cost is the attach point's; the rest of closetrace's is the
 * programs' work. bench/run builds this with clang and attaches it with bpftool. */
/* No headers: the programs read nothing (and the kernel headers' asm/ include would need the
 * host's multiarch directory). */
#define SEC(name) __attribute__((section(name), used))

struct __sk_buff;

char LICENSE[] SEC("license") = "Dual BSD/GPL";

SEC("cgroup_skb/ingress")
int bare_ingress(struct __sk_buff *skb)
{
	return 1;
}

SEC("cgroup_skb/egress")
int bare_egress(struct __sk_buff *skb)
{
	return 1;
}
