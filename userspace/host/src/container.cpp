#include "closetrace/container.h"
#include "closetrace/file_descriptor.h"
#include "closetrace/http.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <linux/nsfs.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>
#include <unordered_set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace closetrace {
namespace {

namespace fs = std::filesystem;

constexpr std::size_t kDockerIdLength = 64;

bool is_container_hex_id(std::string_view text) {
    return text.size() == kDockerIdLength && is_lower_hex(text);
}

// ECS task ids: 32 hex digits (current ARN format) or a UUID (the older format).
bool is_ecs_task_id(std::string_view text) {
    if (text.size() == 32) return is_lower_hex(text);
    if (text.size() != 36) return false;
    for (std::size_t i = 0; i < text.size(); ++i) {
        const bool dash_position = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash_position != (text[i] == '-')) return false;
        if (!dash_position && !is_lower_hex(text.substr(i, 1))) return false;
    }
    return true;
}

// containerd accepts ids of letters, digits and . _ - (ctr lets users choose them).
bool is_containerd_id(std::string_view text) {
    return !text.empty() && std::all_of(text.begin(), text.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
    });
}

std::vector<std::string_view> path_segments(std::string_view path) {
    std::vector<std::string_view> segments;
    while (!path.empty()) {
        const std::size_t slash = path.find('/');
        const std::string_view segment = path.substr(0, slash);
        if (!segment.empty()) segments.push_back(segment);
        if (slash == std::string_view::npos) break;
        path.remove_prefix(slash + 1);
    }
    return segments;
}

// A systemd scope that holds one container, as runtimes name them with the systemd cgroup
// driver: "docker-<id>.scope", "cri-containerd-<id>.scope", ...
struct ScopeShape {
    std::string_view prefix;
    std::string_view runtime;
    bool (*valid_id)(std::string_view);
};
constexpr ScopeShape kContainerScopes[] = {
    {"docker-", "docker", is_container_hex_id},
    {"cri-containerd-", "containerd", is_container_hex_id},
    {"nerdctl-", "containerd", is_container_hex_id},
    {"containerd-", "containerd", is_containerd_id},
};

std::optional<ContainerRef> container_scope(std::string_view segment) {
    constexpr std::string_view kScopeSuffix = ".scope";
    if (!segment.ends_with(kScopeSuffix)) return std::nullopt;
    segment.remove_suffix(kScopeSuffix.size());
    for (const auto& shape : kContainerScopes) {
        if (!segment.starts_with(shape.prefix)) continue;
        const std::string_view id = segment.substr(shape.prefix.size());
        if (!shape.valid_id(id)) return std::nullopt;
        return ContainerRef{.runtime = std::string(shape.runtime), .id = std::string(id)};
    }
    return std::nullopt;
}

// What the segments above a container say about who runs it.
struct Enclosing {
    bool kubepods = false;
    std::optional<std::string> pod_uid;
    std::optional<std::string> ecs_task_id;
};

// "kubepods-burstable-pod<uid>.slice" (systemd driver; the uid's dashes become underscores).
std::optional<std::string> pod_uid_of_slice(std::string_view segment) {
    constexpr std::string_view kSliceSuffix = ".slice";
    const std::size_t pod = segment.rfind("-pod");
    if (pod == std::string_view::npos || !segment.ends_with(kSliceSuffix)) return std::nullopt;
    std::string uid(segment.substr(pod + 4, segment.size() - pod - 4 - kSliceSuffix.size()));
    if (uid.empty()) return std::nullopt;
    std::replace(uid.begin(), uid.end(), '_', '-');
    return uid;
}

ContainerRef placed_in(ContainerRef container, const Enclosing& enclosing) {
    if (enclosing.kubepods) {
        container.runtime = "kubernetes";
        container.pod_uid = enclosing.pod_uid;
    } else if (enclosing.ecs_task_id) {
        container.runtime = "ecs";
        container.task_id = enclosing.ecs_task_id;
    }
    return container;
}

std::optional<ContainerRef> systemd_service(const std::vector<std::string_view>& segments) {
    constexpr std::string_view kServiceSuffix = ".service";
    for (auto it = segments.rbegin(); it != segments.rend(); ++it) {
        if (it->ends_with(kServiceSuffix) && it->size() > kServiceSuffix.size()) {
            return ContainerRef{
                .runtime = "systemd",
                .id = std::string(*it),
                .name = std::string(it->substr(0, it->size() - kServiceSuffix.size()))};
        }
    }
    return std::nullopt;
}

std::optional<std::string> read_small_file(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return std::nullopt;
    std::ostringstream content;
    content << in.rdbuf();
    if (in.bad()) return std::nullopt;
    return std::move(content).str();
}

std::optional<uint64_t> inode_of(const fs::path& path) {
    struct stat info {};
    if (::lstat(path.c_str(), &info) != 0 || !S_ISDIR(info.st_mode)) return std::nullopt;
    return static_cast<uint64_t>(info.st_ino);
}

// /proc/mounts escapes space, tab, newline and backslash in paths as octal (\040).
std::string unescape_mount_path(std::string_view field) {
    std::string path;
    for (std::size_t i = 0; i < field.size(); ++i) {
        if (field[i] == '\\' && i + 3 < field.size()) {
            const std::string_view digits = field.substr(i + 1, 3);
            if (std::all_of(digits.begin(), digits.end(),
                            [](char c) { return c >= '0' && c <= '7'; })) {
                path += static_cast<char>((digits[0] - '0') * 64 + (digits[1] - '0') * 8 +
                                          (digits[2] - '0'));
                i += 3;
                continue;
            }
        }
        path += field[i];
    }
    return path;
}

std::string parent_cgroup_path(const std::string& path) {
    const std::size_t slash = path.rfind('/');
    if (slash == std::string::npos || slash == 0) return "/";
    return path.substr(0, slash);
}

std::string lowercase(std::string_view text) {
    std::string lower(text);
    std::transform(lower.begin(), lower.end(), lower.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return lower;
}

// ---- A minimal HTTP/1.1 client for the agent on loopback ----

constexpr std::size_t kMaxAgentResponseBytes = 16u << 20;

struct HttpResponse {
    int status = 0;
    std::string body;
};

// A response read so far; `at_eof` when the server has closed, which ends a body that has
// neither a length nor chunks.
http::ReadState read_http_response(std::string_view raw, bool at_eof, HttpResponse& response) {
    using http::ReadState;
    http::ResponseHead head;
    const ReadState head_state = http::read_response_head(raw, head);
    if (head_state != ReadState::Complete) {
        return head_state == ReadState::Incomplete && !at_eof ? ReadState::Incomplete
                                                              : ReadState::Malformed;
    }
    response.status = head.status;
    const std::string_view rest = raw.substr(head.body_begin);
    if (head.chunked) {
        const ReadState body = http::decode_chunked(rest, response.body, kMaxAgentResponseBytes);
        return body == ReadState::Incomplete && at_eof ? ReadState::Malformed : body;
    }
    if (head.content_length) {
        if (rest.size() < *head.content_length)
            return at_eof ? ReadState::Malformed : ReadState::Incomplete;
        response.body.assign(rest.substr(0, *head.content_length));
        return ReadState::Complete;
    }
    if (!at_eof) return ReadState::Incomplete;
    response.body.assign(rest);
    return ReadState::Complete;
}

using Clock = std::chrono::steady_clock;

// Waits for `events` on `fd` until `deadline`; false on timeout or error.
bool wait_for(int fd, short events, Clock::time_point deadline) {
    while (true) {
        const auto left =
            std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
        if (left.count() <= 0) return false;
        pollfd waiting{.fd = fd, .events = events, .revents = 0};
        const int ready = ::poll(&waiting, 1, static_cast<int>(left.count()));
        if (ready > 0) return true;
        if (ready < 0 && errno != EINTR) return false;
    }
}

std::optional<HttpResponse> http_get_loopback(uint16_t port, std::string_view target,
                                              std::chrono::milliseconds timeout,
                                              std::string& why_not) {
    const Clock::time_point deadline = Clock::now() + timeout;
    const std::string endpoint = fmt::format("127.0.0.1:{}", port);
    FileDescriptor socket_fd(::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (socket_fd.get() < 0) {
        why_not = fmt::format("socket: {}", std::strerror(errno));
        return std::nullopt;
    }
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(port);
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(socket_fd.get(), reinterpret_cast<const sockaddr*>(&address), sizeof(address)) !=
        0) {
        if (errno != EINPROGRESS) {
            why_not = fmt::format("connecting to {}: {}", endpoint, std::strerror(errno));
            return std::nullopt;
        }
        if (!wait_for(socket_fd.get(), POLLOUT, deadline)) {
            why_not =
                fmt::format("connecting to {}: no answer within {} ms", endpoint, timeout.count());
            return std::nullopt;
        }
        int error = 0;
        socklen_t error_size = sizeof(error);
        getsockopt(socket_fd.get(), SOL_SOCKET, SO_ERROR, &error, &error_size);
        if (error != 0) {
            why_not = fmt::format("connecting to {}: {}", endpoint, std::strerror(error));
            return std::nullopt;
        }
    }

    const std::string request = fmt::format(
        "GET {} HTTP/1.1\r\nHost: localhost:{}\r\nAccept: application/json\r\n"
        "Connection: close\r\n\r\n",
        target, port);
    std::string_view unsent = request;
    while (!unsent.empty()) {
        const ssize_t sent = ::send(socket_fd.get(), unsent.data(), unsent.size(), MSG_NOSIGNAL);
        if (sent > 0) {
            unsent.remove_prefix(static_cast<std::size_t>(sent));
        } else if (sent < 0 && (errno == EAGAIN || errno == EINTR)) {
            if (!wait_for(socket_fd.get(), POLLOUT, deadline)) {
                why_not =
                    fmt::format("sending to {}: timed out after {} ms", endpoint, timeout.count());
                return std::nullopt;
            }
        } else {
            why_not = fmt::format("sending to {}: {}", endpoint, std::strerror(errno));
            return std::nullopt;
        }
    }

    std::string raw;
    HttpResponse response;
    char buffer[16384];
    while (true) {
        if (!wait_for(socket_fd.get(), POLLIN, deadline)) {
            why_not = fmt::format("reading from {}: no complete answer within {} ms", endpoint,
                                  timeout.count());
            return std::nullopt;
        }
        const ssize_t received = ::recv(socket_fd.get(), buffer, sizeof(buffer), 0);
        if (received < 0) {
            if (errno == EAGAIN || errno == EINTR) continue;
            why_not = fmt::format("reading from {}: {}", endpoint, std::strerror(errno));
            return std::nullopt;
        }
        raw.append(buffer, static_cast<std::size_t>(received));
        if (raw.size() > kMaxAgentResponseBytes) {
            why_not =
                fmt::format("{} answered more than {} bytes", endpoint, kMaxAgentResponseBytes);
            return std::nullopt;
        }
        switch (read_http_response(raw, received == 0, response)) {
            case http::ReadState::Complete:
                return response;
            case http::ReadState::Malformed:
                why_not = fmt::format("{} did not answer in HTTP/1.x", endpoint);
                return std::nullopt;
            case http::ReadState::Incomplete:
                break;
        }
    }
}

std::string string_member(const nlohmann::json& object, const char* key) {
    const auto found = object.find(key);
    return found != object.end() && found->is_string() ? found->get<std::string>() : std::string();
}

}  // namespace

std::optional<ContainerRef> container_from_cgroup_path(std::string_view path) {
    const std::vector<std::string_view> segments = path_segments(path);
    Enclosing enclosing;
    for (std::size_t i = 0; i < segments.size(); ++i) {
        const std::string_view segment = segments[i];
        const std::string_view previous = i > 0 ? segments[i - 1] : std::string_view();

        if (segment == "kubepods" || segment.starts_with("kubepods-") ||
            segment == "kubepods.slice") {
            enclosing.kubepods = true;
            if (auto uid = pod_uid_of_slice(segment)) enclosing.pod_uid = std::move(uid);
            continue;
        }
        if (enclosing.kubepods && segment.starts_with("pod") && segment.size() > 3) {
            enclosing.pod_uid = std::string(segment.substr(3));  // cgroupfs driver: "pod<uid>"
            continue;
        }
        if (segment == "ecs" && i + 1 < segments.size() && is_ecs_task_id(segments[i + 1])) {
            enclosing.ecs_task_id = std::string(segments[++i]);
            continue;
        }
        constexpr std::string_view kEcsTaskSlicePrefix = "ecstasks-", kSliceSuffix = ".slice";
        if (segment.starts_with(kEcsTaskSlicePrefix) && segment.ends_with(kSliceSuffix)) {
            const std::string_view task =
                segment.substr(kEcsTaskSlicePrefix.size(),
                               segment.size() - kEcsTaskSlicePrefix.size() - kSliceSuffix.size());
            if (is_ecs_task_id(task)) enclosing.ecs_task_id = std::string(task);
            continue;
        }
        if (auto scoped = container_scope(segment)) return placed_in(std::move(*scoped), enclosing);
        // cgroupfs driver: the bare id below /docker, /ecs/<task> or a Kubernetes pod.
        if (is_container_hex_id(segment) &&
            (previous == "docker" || enclosing.ecs_task_id || enclosing.pod_uid)) {
            return placed_in(ContainerRef{.runtime = "docker", .id = std::string(segment)},
                             enclosing);
        }
    }
    return systemd_service(segments);
}

std::vector<ProcCgroupLine> parse_proc_cgroup(std::string_view content) {
    constexpr std::string_view kDeletedSuffix = " (deleted)";
    std::vector<ProcCgroupLine> lines;
    while (!content.empty()) {
        const std::size_t newline = content.find('\n');
        const std::string_view line = content.substr(0, newline);
        content.remove_prefix(newline == std::string_view::npos ? content.size() : newline + 1);

        const std::size_t first_colon = line.find(':');
        if (first_colon == std::string_view::npos) continue;
        const std::size_t second_colon = line.find(':', first_colon + 1);
        if (second_colon == std::string_view::npos) continue;
        const std::string_view hierarchy = line.substr(0, first_colon);
        unsigned hierarchy_id = 0;
        const auto [end, error] =
            std::from_chars(hierarchy.data(), hierarchy.data() + hierarchy.size(), hierarchy_id);
        if (hierarchy.empty() || error != std::errc{} ||
            end != hierarchy.data() + hierarchy.size()) {
            continue;
        }
        std::string_view path = line.substr(second_colon + 1);
        if (!path.starts_with('/')) continue;
        if (path.ends_with(kDeletedSuffix)) path.remove_suffix(kDeletedSuffix.size());
        lines.push_back({hierarchy_id,
                         std::string(line.substr(first_colon + 1, second_colon - first_colon - 1)),
                         std::string(path)});
    }
    return lines;
}

std::optional<ContainerRef> container_from_proc_cgroup(std::string_view content) {
    std::vector<ProcCgroupLine> lines = parse_proc_cgroup(content);
    // The v2 line first; a container named anywhere beats a systemd service, since on cgroup v1
    // hosts the v2 line often shows only the runtime's service (containerd.service).
    std::stable_partition(lines.begin(), lines.end(), [](const ProcCgroupLine& line) {
        return line.hierarchy_id == 0 && line.controllers.empty();
    });
    std::optional<ContainerRef> service;
    for (const auto& line : lines) {
        auto container = container_from_cgroup_path(line.path);
        if (!container) continue;
        if (container->runtime != "systemd") return container;
        if (!service) service = std::move(container);
    }
    return service;
}

std::optional<fs::path> find_cgroup2_mount(const fs::path& proc_mounts) {
    const std::optional<std::string> mounts = read_small_file(proc_mounts);
    if (!mounts) return std::nullopt;
    std::vector<fs::path> candidates;
    std::istringstream lines(*mounts);
    std::string line;
    while (std::getline(lines, line)) {
        std::istringstream fields(line);
        std::string device, mount_point, type;
        if (fields >> device >> mount_point >> type && type == "cgroup2") {
            candidates.emplace_back(unescape_mount_path(mount_point));
        }
    }
    for (const auto& candidate : candidates) {
        std::error_code error;
        if (fs::is_directory(candidate, error) && !fs::exists(candidate / "cgroup.events", error)) {
            return candidate;
        }
    }
    if (candidates.empty()) return std::nullopt;
    return candidates.front();
}

CgroupResolver::CgroupResolver(fs::path mount_point) : mount_point_(std::move(mount_point)) {}

std::unordered_map<uint64_t, std::string> CgroupResolver::walk() {
    ++walks_;
    std::unordered_map<uint64_t, std::string> paths;
    if (const auto root = inode_of(mount_point_)) paths.emplace(*root, "/");
    // Explicit stack rather than recursive_directory_iterator: cgroups vanish while we walk
    // (containers exit), and a vanished directory must only drop its own subtree.
    std::vector<std::string> pending{""};
    while (!pending.empty()) {
        const std::string relative = std::move(pending.back());
        pending.pop_back();
        const std::string directory = mount_point_.string() + relative;
        DIR* listing = ::opendir(directory.c_str());
        if (!listing) continue;
        while (const dirent* entry = ::readdir(listing)) {
            const std::string_view name = entry->d_name;
            if (name == "." || name == "..") continue;
            if (entry->d_type != DT_DIR && entry->d_type != DT_UNKNOWN) continue;
            std::string child = relative + "/" + std::string(name);
            if (const auto inode = inode_of(mount_point_.string() + child)) {
                paths.emplace(*inode, child);
                pending.push_back(std::move(child));
            }
        }
        ::closedir(listing);
    }
    for (const auto& [cgroup_id, path] : paths) paths_.insert_or_assign(cgroup_id, path);
    return paths;
}

std::optional<std::string> CgroupResolver::path_of(uint64_t cgroup_id) {
    if (const auto found = paths_.find(cgroup_id); found != paths_.end()) return found->second;
    if (removed_.contains(cgroup_id)) return std::nullopt;
    walk();
    if (const auto found = paths_.find(cgroup_id); found != paths_.end()) return found->second;
    removed_.insert(cgroup_id);
    return std::nullopt;
}

std::vector<ContainerCgroup> CgroupResolver::containers() {
    std::vector<ContainerCgroup> found;
    for (const auto& [cgroup_id, path] : walk()) {
        auto container = container_from_cgroup_path(path);
        if (!container) continue;
        // Only the container's own directory, not the cgroups nested inside it.
        if (container_from_cgroup_path(parent_cgroup_path(path)) == container) continue;
        found.push_back({cgroup_id, path, std::move(*container)});
    }
    std::sort(found.begin(), found.end(),
              [](const ContainerCgroup& a, const ContainerCgroup& b) { return a.path < b.path; });
    return found;
}

const EcsContainer* EcsTaskIndex::find(std::string_view docker_id) const {
    const auto found = by_docker_id_.find(std::string(docker_id));
    return found == by_docker_id_.end() ? nullptr : &found->second;
}

void EcsTaskIndex::add(EcsContainer container) {
    std::string key = container.docker_id;
    by_docker_id_.insert_or_assign(std::move(key), std::move(container));
}

void EcsTaskIndex::merge(EcsTaskIndex newer) {
    for (auto& [docker_id, container] : newer.by_docker_id_) {
        by_docker_id_.insert_or_assign(docker_id, std::move(container));
    }
}

std::optional<EcsTaskIndex> parse_ecs_tasks(std::string_view json) {
    const nlohmann::json document =
        nlohmann::json::parse(json, nullptr, /*allow_exceptions=*/false);
    if (document.is_discarded() || !document.is_object()) return std::nullopt;
    const auto tasks = document.find("Tasks");
    if (tasks == document.end() || !(tasks->is_array() || tasks->is_null())) return std::nullopt;

    EcsTaskIndex index;
    if (tasks->is_null()) return index;  // an agent with no tasks may say null
    for (const auto& task : *tasks) {
        if (!task.is_object()) continue;
        EcsTask about{string_member(task, "Arn"), string_member(task, "Family"),
                      string_member(task, "Version")};
        const auto containers = task.find("Containers");
        if (about.task_arn.empty() || containers == task.end() || !containers->is_array()) continue;
        for (const auto& container : *containers) {
            if (!container.is_object()) continue;
            std::string docker_id = string_member(container, "DockerId");
            // A container not yet created has no Docker id.
            if (!is_container_hex_id(docker_id)) continue;
            index.add({std::move(docker_id), string_member(container, "Name"), about});
        }
    }
    return index;
}

std::optional<EcsTaskIndex> fetch_ecs_tasks(const EcsAgentEndpoint& endpoint,
                                            std::string* why_not) {
    std::string reason;
    std::optional<EcsTaskIndex> index;
    if (const auto response =
            http_get_loopback(endpoint.port, "/v1/tasks", endpoint.timeout, reason)) {
        if (response->status != 200) {
            reason = fmt::format("the ECS agent answered HTTP {}", response->status);
        } else if (!(index = parse_ecs_tasks(response->body))) {
            reason = "the answer is not the ECS agent's task list";
        }
    }
    if (!index && why_not) *why_not = reason;
    return index;
}

void annotate_with_ecs(ContainerRef& container, const EcsTaskIndex& tasks) {
    const EcsContainer* known = tasks.find(container.id);
    if (!known) return;
    container.runtime = "ecs";
    if (!known->name.empty()) container.name = known->name;
    container.ecs = known->task;
    if (!container.task_id) {
        const std::size_t slash = known->task.task_arn.rfind('/');
        if (slash != std::string::npos) container.task_id = known->task.task_arn.substr(slash + 1);
    }
}

bool container_matches(const ContainerRef& container, std::string_view id_or_name) {
    if (id_or_name.empty()) return false;
    if (id_or_name == container.id || id_or_name == container.name ||
        id_or_name == container.task_id) {
        return true;
    }
    const std::string lower = lowercase(id_or_name);
    if (lower.size() < kShortIdLength || !is_lower_hex(lower)) return false;
    return container.id.starts_with(lower) ||
           (container.task_id && container.task_id->starts_with(lower));
}

const char* to_string(ContainerSource source) {
    switch (source) {
        case ContainerSource::SocketCgroup:
            return "socket_cgroup";
        case ContainerSource::ProcessCgroup:
            return "process_cgroup";
    }
    return "?";
}

ContainerAttributor::ContainerAttributor(AttributorOptions options) : options_(std::move(options)) {
    if (options_.cgroup2_mount) resolver_.emplace(*options_.cgroup2_mount);
}

void ContainerAttributor::annotate(ContainerRef& container) {
    // Only Docker containers can be ECS's; anything else would only cost requests.
    if (!options_.ecs_agent || (container.runtime != "docker" && container.runtime != "ecs"))
        return;
    if (!ecs_tasks_.find(container.id)) {
        const auto now = std::chrono::steady_clock::now();
        if (!last_ecs_fetch_ || now - *last_ecs_fetch_ >= options_.ecs_refresh_interval) {
            last_ecs_fetch_ = now;
            if (auto fetched = fetch_ecs_tasks(*options_.ecs_agent))
                ecs_tasks_.merge(std::move(*fetched));
        }
    }
    annotate_with_ecs(container, ecs_tasks_);
}

std::optional<std::string> ContainerAttributor::cgroup_path(uint64_t cgroup_id) {
    if (!resolver_ || cgroup_id == 0) return std::nullopt;
    return resolver_->path_of(cgroup_id);
}

std::optional<ContainerRef> ContainerAttributor::of_socket_cgroup(uint64_t cgroup_id) {
    if (!resolver_ || cgroup_id == 0) return std::nullopt;
    auto [cached, inserted] = by_cgroup_id_.try_emplace(cgroup_id);
    if (inserted) {
        if (const auto path = resolver_->path_of(cgroup_id))
            cached->second = container_from_cgroup_path(*path);
    }
    return cached->second;
}

std::optional<ContainerRef> ContainerAttributor::of_process(uint32_t pid) {
    if (pid == 0) return std::nullopt;
    auto [cached, inserted] = by_pid_.try_emplace(pid);
    if (inserted) {
        if (const auto content =
                read_small_file(options_.proc_root / std::to_string(pid) / "cgroup")) {
            cached->second = container_from_proc_cgroup(*content);
        }
    }
    return cached->second;
}

std::optional<ContainerAttribution> ContainerAttributor::container_of(uint64_t cgroup_id,
                                                                      std::optional<uint32_t> pid) {
    std::optional<ContainerRef> from_socket = of_socket_cgroup(cgroup_id);
    // A container from the socket's cgroup is exact. A systemd service there may only be where a
    // cgroup v1 host's container runtime left the v2 cgroup (e.g. containerd.service), so the
    // process's own cgroups, which may name a container in a v1 hierarchy, come first.
    if (from_socket && from_socket->runtime != "systemd") {
        annotate(*from_socket);
        return ContainerAttribution{std::move(*from_socket), ContainerSource::SocketCgroup};
    }
    if (pid) {
        if (auto from_process = of_process(*pid);
            from_process && (from_process->runtime != "systemd" || !from_socket)) {
            annotate(*from_process);
            return ContainerAttribution{std::move(*from_process), ContainerSource::ProcessCgroup};
        }
    }
    if (from_socket)
        return ContainerAttribution{std::move(*from_socket), ContainerSource::SocketCgroup};
    return std::nullopt;
}

std::vector<RunningContainer> ContainerAttributor::running_containers() {
    std::vector<RunningContainer> running;
    std::unordered_set<std::string> seen_ids;
    if (resolver_) {
        for (auto& cgroup : resolver_->containers()) {
            seen_ids.insert(cgroup.container.id);
            ContainerRef container = cgroup.container;
            running.push_back({std::move(container), std::move(cgroup)});
        }
    }
    std::vector<uint32_t> pids;
    std::error_code error;
    for (fs::directory_iterator it(options_.proc_root, error), end; !error && it != end;
         it.increment(error)) {
        const std::string name = it->path().filename().string();
        uint32_t pid = 0;
        const auto [parsed_end, parse_error] =
            std::from_chars(name.data(), name.data() + name.size(), pid);
        if (parse_error == std::errc{} && parsed_end == name.data() + name.size())
            pids.push_back(pid);
    }
    std::sort(pids.begin(), pids.end());
    for (const uint32_t pid : pids) {
        const auto content = read_small_file(options_.proc_root / std::to_string(pid) / "cgroup");
        if (!content) continue;  // exited meanwhile
        auto container = container_from_proc_cgroup(*content);
        if (container && seen_ids.insert(container->id).second)
            running.push_back({std::move(*container), {}});
    }
    for (auto& entry : running) annotate(entry.container);
    return running;
}

ProcessFamily::ProcessFamily(uint32_t root_pid, fs::path proc_root)
    : root_pid_(root_pid), proc_root_(std::move(proc_root)) {}

std::optional<uint32_t> ProcessFamily::parent_of(uint32_t pid) const {
    const auto stat = read_small_file(proc_root_ / std::to_string(pid) / "stat");
    return stat ? parent_pid_from_stat(*stat) : std::nullopt;
}

bool ProcessFamily::contains(uint32_t pid) {
    // Bounded: a ppid chain is never longer than the pid space, but /proc can change under us.
    constexpr int kMaxDepth = 4096;
    std::vector<uint32_t> chain;
    bool verdict = false;
    uint32_t current = pid;
    for (int depth = 0; depth < kMaxDepth; ++depth) {
        if (current == root_pid_) {
            verdict = true;
            break;
        }
        if (const auto known = verdicts_.find(current); known != verdicts_.end()) {
            verdict = known->second;
            break;
        }
        chain.push_back(current);
        const auto parent = parent_of(current);
        if (!parent || *parent == 0 || *parent == current) break;
        current = *parent;
    }
    for (const uint32_t member : chain) verdicts_[member] = verdict;
    return verdict;
}

std::optional<uint32_t> parent_pid_from_stat(std::string_view stat) {
    const std::size_t command_end = stat.rfind(')');
    if (command_end == std::string_view::npos) return std::nullopt;
    std::string_view rest = stat.substr(command_end + 1);  // " S 1 ..."
    if (rest.size() < 4 || rest[0] != ' ' || rest[2] != ' ') return std::nullopt;
    rest.remove_prefix(3);
    uint32_t parent = 0;
    const auto [end, error] = std::from_chars(rest.data(), rest.data() + rest.size(), parent);
    if (error != std::errc{} || end == rest.data() ||
        (end != rest.data() + rest.size() && *end != ' ')) {
        return std::nullopt;
    }
    return parent;
}

std::optional<uint32_t> netns_inode(std::string_view path_or_inode, std::string* error) {
    auto failed = [&](std::string reason) -> std::optional<uint32_t> {
        if (error) *error = std::move(reason);
        return std::nullopt;
    };
    if (path_or_inode.empty()) return failed("--netns: empty");
    if (std::all_of(path_or_inode.begin(), path_or_inode.end(),
                    [](char c) { return c >= '0' && c <= '9'; })) {
        uint64_t inode = 0;
        const auto [end, parse_error] = std::from_chars(
            path_or_inode.data(), path_or_inode.data() + path_or_inode.size(), inode);
        if (parse_error != std::errc{} || inode == 0 ||
            inode > std::numeric_limits<uint32_t>::max()) {
            return failed(
                fmt::format("--netns {}: not a network namespace inode number", path_or_inode));
        }
        return static_cast<uint32_t>(inode);
    }
    const std::string path(path_or_inode);
    FileDescriptor namespace_fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (namespace_fd.get() < 0) {
        return failed(fmt::format("--netns {}: {}; give /proc/PID/ns/net of a process in it, "
                                  "/run/netns/NAME or its inode number",
                                  path, std::strerror(errno)));
    }
    if (::ioctl(namespace_fd.get(), NS_GET_NSTYPE) != CLONE_NEWNET) {
        return failed(fmt::format(
            "--netns {}: not a network namespace (/proc/PID/ns/net, /run/netns/NAME)", path));
    }
    struct stat info {};
    if (::fstat(namespace_fd.get(), &info) != 0)
        return failed(fmt::format("--netns {}: {}", path, std::strerror(errno)));
    return static_cast<uint32_t>(info.st_ino);
}

}  // namespace closetrace
