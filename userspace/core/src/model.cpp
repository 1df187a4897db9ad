#include "closetrace/model.h"

#include <array>
#include <utility>

namespace closetrace {
namespace {

template <typename Enum, std::size_t N>
std::optional<Enum> lookup(const std::array<std::pair<Enum, const char*>, N>& names,
                           std::string_view name) {
    for (const auto& [value, text] : names) {
        if (name == text) return value;
    }
    return std::nullopt;
}

template <typename Enum, std::size_t N>
const char* name_of(const std::array<std::pair<Enum, const char*>, N>& names, Enum value) {
    for (const auto& [candidate, text] : names) {
        if (candidate == value) return text;
    }
    return "?";
}

constexpr std::array<std::pair<Initiator, const char*>, 3> kInitiatorNames{{
    {Initiator::Local, "local"},
    {Initiator::Peer, "peer"},
    {Initiator::Unknown, "unknown"},
}};

constexpr std::array<std::pair<CloseHow, const char*>, 2> kHowNames{{
    {CloseHow::Fin, "fin"},
    {CloseHow::Rst, "rst"},
}};

constexpr std::array<std::pair<Outcome, const char*>, 5> kOutcomeNames{{
    {Outcome::Completed, "completed"},
    {Outcome::UnansweredAtClose, "unanswered_at_close"},
    {Outcome::AfterLocalClose, "after_local_close"},
    {Outcome::AfterPeerClose, "after_peer_close"},
    {Outcome::InFlight, "in_flight"},
}};

constexpr std::array<std::pair<Verdict, const char*>, 9> kVerdictNames{{
    {Verdict::LocalIdleClose, "local_idle_close"},
    {Verdict::PeerIdleClose, "peer_idle_close"},
    {Verdict::LocalCloseRace, "local_close_race"},
    {Verdict::PeerCloseRace, "peer_close_race"},
    {Verdict::LocalResetInflight, "local_reset_inflight"},
    {Verdict::PeerCloseInflight, "peer_close_inflight"},
    {Verdict::LocalReset, "local_reset"},
    {Verdict::PeerReset, "peer_reset"},
    {Verdict::Open, "open"},
}};

constexpr std::array<std::pair<Role, const char*>, 3> kRoleNames{{
    {Role::Unknown, "unknown"},
    {Role::Server, "server"},
    {Role::Client, "client"},
}};

}  // namespace

const char* to_string(Initiator initiator) { return name_of(kInitiatorNames, initiator); }
const char* to_string(CloseHow how) { return name_of(kHowNames, how); }
const char* to_string(Outcome outcome) { return name_of(kOutcomeNames, outcome); }
const char* to_string(Verdict verdict) { return name_of(kVerdictNames, verdict); }
const char* to_string(Role role) { return name_of(kRoleNames, role); }

std::optional<Initiator> initiator_from_string(std::string_view name) {
    return lookup(kInitiatorNames, name);
}
std::optional<CloseHow> close_how_from_string(std::string_view name) {
    return lookup(kHowNames, name);
}
std::optional<Outcome> outcome_from_string(std::string_view name) {
    return lookup(kOutcomeNames, name);
}
std::optional<Verdict> verdict_from_string(std::string_view name) {
    return lookup(kVerdictNames, name);
}
std::optional<Role> role_from_string(std::string_view name) { return lookup(kRoleNames, name); }

void bound_request_list(Connection& conn) {
    std::vector<Request>& requests = conn.requests;
    if (requests.size() <= kListedFirstRequests + kListedLastRequests) return;
    const std::size_t last_start = requests.size() - kListedLastRequests;
    std::vector<Request> kept;
    kept.reserve(kListedFirstRequests + kListedLastRequests);
    for (std::size_t i = 0; i < requests.size(); ++i) {
        const bool listed = i < kListedFirstRequests || i >= last_start ||
                            requests[i].outcome != Outcome::Completed;
        if (listed) {
            kept.push_back(std::move(requests[i]));
        } else {
            ++conn.requests_omitted;
        }
    }
    requests = std::move(kept);
}

}  // namespace closetrace
