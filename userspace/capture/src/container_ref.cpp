#include "closetrace/container_ref.h"

#include <algorithm>

#include <fmt/format.h>

namespace closetrace {
namespace {

std::string short_id(const std::string& id) {
    return is_lower_hex(id) && id.size() > kShortIdLength ? id.substr(0, kShortIdLength) : id;
}

}  // namespace

bool is_lower_hex(std::string_view text) {
    return !text.empty() && std::all_of(text.begin(), text.end(), [](char c) {
        return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
    });
}

std::string container_label(const std::optional<ContainerRef>& container) {
    if (!container) return "-";
    // A unit's full name ("nginx.service") says what it is; a container's name, where known, is
    // what people call it.
    const std::string who = container->runtime == "systemd"
                                ? container->id
                                : container->name.value_or(short_id(container->id));
    std::string label = container->runtime + ":" + who;
    if (container->task_id) label += fmt::format(" (task {})", short_id(*container->task_id));
    return label;
}

}  // namespace closetrace
