#include "closetrace/container_ref.h"

namespace closetrace {
namespace {

// A view into `id`: the analysis labels every connection, so the label is built in one string.
std::string_view short_id(std::string_view id) {
    return is_lower_hex(id) && id.size() > kShortIdLength ? id.substr(0, kShortIdLength) : id;
}

}  // namespace

bool is_lower_hex(std::string_view text) {
    // No early exit: the compiler vectorises the loop (the analysis labels every connection,
    // and ids are 32 to 64 characters).
    bool hex = !text.empty();
    for (const char c : text) hex &= (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
    return hex;
}

std::string container_label(const std::optional<ContainerRef>& container) {
    std::string label;
    container_label(container, label);
    return label;
}

void container_label(const std::optional<ContainerRef>& container, std::string& out) {
    out.clear();
    if (!container) {
        out += '-';  // not assign("-"): g++ 12 warns of an overlap there (-Wrestrict)
        return;
    }
    // A unit's full name ("nginx.service") says what it is; a container's name, where known, is
    // what people call it.
    const std::string_view who = container->runtime == "systemd"
                                     ? std::string_view(container->id)
                                     : container->name ? std::string_view(*container->name)
                                                       : short_id(container->id);
    out.reserve(container->runtime.size() + 1 + who.size() + (container->task_id ? 20 : 0));
    out.append(container->runtime).append(":").append(who);
    if (container->task_id) {
        out.append(" (task ").append(short_id(*container->task_id)).append(")");
    }
}

}  // namespace closetrace
