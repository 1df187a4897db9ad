// Which container a connection belongs to, as plain data: what a `conn` record carries and the
// analysis groups by. Finding it on the running host (cgroups, /proc, the ECS agent) is the host
// stage's work (container.h); the model only holds the answer.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace closetrace {

// What the ECS agent says about a task (GET /v1/tasks on the container instance).
struct EcsTask {
    std::string task_arn;  // "arn:aws:ecs:us-west-2:012345678910:task/default/5a2c…"
    std::string family;    // task definition family
    std::string revision;  // task definition revision (the agent's "Version")
    bool operator==(const EcsTask&) const = default;
};

// A container (or systemd service) that a cgroup belongs to.
struct ContainerRef {
    std::string runtime;  // "docker" | "containerd" | "ecs" | "kubernetes" | "systemd"
    // Container id (64 hex for Docker, ECS and CRI); the unit name ("nginx.service") for systemd.
    std::string id;
    std::optional<std::string> name{};     // ECS container name (from the agent); systemd: "nginx"
    std::optional<std::string> task_id{};  // ECS task id (from the cgroup path or the task ARN)
    std::optional<std::string> pod_uid{};  // Kubernetes pod uid
    std::optional<EcsTask> ecs{};          // from the ECS agent, where it answers
    bool operator==(const ContainerRef&) const = default;
};

// The length of id prefix `docker ps` shows.
inline constexpr std::size_t kShortIdLength = 12;

// Only 0-9 and a-f, and not empty: the ids Docker, ECS and CRI give.
bool is_lower_hex(std::string_view text);

// A short label for reports: "ecs:api (task 1a2b3c4d5e6f)", "docker:9581a69a761a",
// "systemd:nginx.service"; "-" for none (a host process).
std::string container_label(const std::optional<ContainerRef>& container);
// The same into `out`, replacing what it held: a reader of many records reuses its storage.
void container_label(const std::optional<ContainerRef>& container, std::string& out);

}  // namespace closetrace
