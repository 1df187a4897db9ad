// Wording shared by the analysis's sentences and its renderings (the render stage's too).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "closetrace/analysis.h"
#include "closetrace/text.h"

namespace closetrace::analysis_text {

// "2.001 s", "60.00 s", "412.3 ms".
std::string duration(double ms);
// "3 requests", "1 request".
std::string count_of(uint64_t count, std::string_view singular, std::string_view plural);
using closetrace::printable;
using closetrace::request_line;
using closetrace::stream_line;
// The first caught request, else stream, of a caught connection, with how many more; "-" none.
std::string caught_text(const CaughtConnection& caught);
// "60.00 s (assumed: the ALB default)"; callers write "the peer's idle timeout of ...".
std::string peer_timeout_text(const PeerTimeout& timeout);
// "127.0.0.2 never closed an idle connection, and 3 of its connections were closed idle after
// up to 3.002 s": what an outlasted timeout rests on.
std::string outlasting_text(const OutlastingPeers& peers);
// "127.0.0.2", "10.0.1.5, 10.0.2.7, 10.0.3.9 and 2 more".
std::string outlasting_names(const OutlastingPeers& peers);
// The first `shown` of `names` (printable), and how many more: "ip-a, ip-b and 3 more".
std::string listed_names(const std::vector<std::string>& names, std::size_t shown);
// "client on this host: python3 (pid 3762)": the other process of a same-host connection.
std::string client_end_text(const ClientEnd& client);
// "comm node announces Keep-Alive: timeout=5": a process' announced idle timeout (a comm not
// seen is "a process not seen").
std::string announced_text(const std::string& comm, const AnnouncedTimeout& announced);
// What the idle timeouts leave out, by cause, and the health checkers' connections.
std::string left_out_sentence(const TraceAnalysis& trace);

}  // namespace closetrace::analysis_text
