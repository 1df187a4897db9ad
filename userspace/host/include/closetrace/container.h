// Whose socket it is: the container, ECS task or systemd service behind a connection, from
// cgroup paths (the socket's cgroup v2 id, or the owning process's /proc/<pid>/cgroup) and the
// ECS agent's introspection endpoint; and the pieces the --container, --pid and --netns
// filters need.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "closetrace/container_ref.h"

namespace closetrace {

// The container a cgroup path belongs to, as the path appears in /proc/<pid>/cgroup or below a
// cgroup mount: cgroup v1 ("/docker/<id>", "/ecs/<task>/<id>", "/kubepods/burstable/pod<uid>/<id>")
// and cgroup v2 ("/system.slice/docker-<id>.scope", "/system.slice/containerd-<id>.scope",
// "/ecstasks.slice/ecstasks-<task>.slice/docker-<id>.scope",
// "/kubepods.slice/…/kubepods-burstable-pod<uid>.slice/cri-containerd-<id>.scope"), or else the
// deepest systemd service ("/system.slice/nginx.service"). With nested containers the outermost
// wins: that is the one the host's orchestrator (ECS, Kubernetes, docker ps) knows. nullopt for
// the root, login sessions, and shapes not recognised.
std::optional<ContainerRef> container_from_cgroup_path(std::string_view path);

// One line of /proc/<pid>/cgroup: "4:memory:/ecs/<task>/<id>" (v1) or "0::/system.slice/…" (v2).
struct ProcCgroupLine {
    unsigned hierarchy_id = 0;  // 0 for the cgroup v2 line
    std::string controllers;    // "memory", "cpu,cpuacct", "name=systemd"; empty for v2
    std::string path;           // relative to the reader's cgroup namespace; " (deleted)" removed
};

// Every well-formed line, in file order; malformed lines are skipped.
std::vector<ProcCgroupLine> parse_proc_cgroup(std::string_view content);

// The container named by the v2 line or, failing that, by the first v1 line that names one
// (cgroup v1 hosts such as Amazon Linux 2 show "0::/" or no v2 line at all); a systemd service
// only where no line names a container.
std::optional<ContainerRef> container_from_proc_cgroup(std::string_view content);

// The cgroup v2 hierarchy's mount point from a /proc/mounts-format file, never assumed. Inside a
// container with its own cgroup namespace there may be two cgroup2 mounts (the namespaced one and
// the host's bind-mounted one): the first whose directory is the hierarchy's real root (it has
// no cgroup.events file, which every non-root cgroup has) wins, else the first.
std::optional<std::filesystem::path> find_cgroup2_mount(
    const std::filesystem::path& proc_mounts = "/proc/mounts");

// A cgroup directory that is a container's own (not a sub-cgroup inside it).
struct ContainerCgroup {
    uint64_t cgroup_id = 0;  // the directory's inode: the kernel's cgroup id
    std::string path;        // below the mount, "/system.slice/docker-<id>.scope"
    ContainerRef container;
};

// Maps cgroup ids (the inode numbers of cgroup v2 directories, which is what the kernel reports
// as a socket's cgroup id) to paths by walking the hierarchy.
class CgroupResolver {
public:
    explicit CgroupResolver(std::filesystem::path mount_point);

    const std::filesystem::path& mount_point() const { return mount_point_; }

    // The path below the mount ("/" for the root). Ids are never reused, so a path once seen is
    // kept after its cgroup is removed (a crashed container's last connections are written
    // after it is gone). A miss walks the hierarchy again; ids still missing then belong to
    // cgroups removed before any walk saw them, and are remembered so they never cost another.
    std::optional<std::string> path_of(uint64_t cgroup_id);

    // Every container's own cgroup that exists now.
    std::vector<ContainerCgroup> containers();

    std::size_t walks() const { return walks_; }

private:
    // What exists now; also added to what path_of knows.
    std::unordered_map<uint64_t, std::string> walk();

    std::filesystem::path mount_point_;
    std::unordered_map<uint64_t, std::string> paths_;
    std::unordered_set<uint64_t> removed_;
    std::size_t walks_ = 0;
};

// The ECS agent's introspection endpoint, always on 127.0.0.1 (the agent listens on the
// container instance's loopback; closetrace never asks anything else). The port is settable for
// tests.
struct EcsAgentEndpoint {
    uint16_t port = 51678;
    std::chrono::milliseconds timeout{300};  // connect, send and receive together
};

// One container of a task, as the agent lists it.
struct EcsContainer {
    std::string docker_id;  // 64 hex
    std::string name;       // the container's name in the task definition
    EcsTask task;
};

// The agent's tasks, by Docker id.
class EcsTaskIndex {
public:
    const EcsContainer* find(std::string_view docker_id) const;
    std::size_t size() const { return by_docker_id_.size(); }
    void add(EcsContainer container);
    // Adds (or updates) every container of `newer`, keeping the ones it no longer lists: the
    // agent forgets stopped tasks, but their connections may still be written.
    void merge(EcsTaskIndex newer);

private:
    std::unordered_map<std::string, EcsContainer> by_docker_id_;
};

// Parses the agent's GET /v1/tasks answer:
//   {"Tasks":[{"Arn":"arn:aws:ecs:…:task/…","DesiredStatus":"RUNNING","KnownStatus":"RUNNING",
//              "Family":"hello_world","Version":"8",
//              "Containers":[{"DockerId":"9581…","DockerName":"ecs-hello_world-8-mysql-fcae…",
//                             "Name":"mysql"}]}]}
// nullopt when the text is not that (not JSON, no "Tasks" array); tasks or containers without
// their identifying members are skipped.
std::optional<EcsTaskIndex> parse_ecs_tasks(std::string_view json);

// GET /v1/tasks from the agent with a blocking HTTP/1.1 request bounded by the endpoint's
// timeout. nullopt, with the reason in `why_not` when given, when no agent answers (not an ECS
// container instance) or the answer is not the expected one.
std::optional<EcsTaskIndex> fetch_ecs_tasks(const EcsAgentEndpoint& endpoint = {},
                                            std::string* why_not = nullptr);

// Adds what the agent knows about the container (its name, task and task definition); the
// runtime becomes "ecs". Unchanged when the agent does not list it.
void annotate_with_ecs(ContainerRef& container, const EcsTaskIndex& tasks);

// Whether `container` is the one --container ID_OR_NAME means: at least 12 hex digits match a
// prefix of its id (the length `docker ps` shows) or of its ECS task id (keeping all of the
// task's containers); any text matches its name or its id exactly.
bool container_matches(const ContainerRef& container, std::string_view id_or_name);

// Where a connection's container came from.
enum class ContainerSource {
    SocketCgroup,   // the socket's cgroup id, as the kernel reported it: exact
    ProcessCgroup,  // /proc/<pid>/cgroup of the owning process when the record was written
};
const char* to_string(ContainerSource source);

struct ContainerAttribution {
    ContainerRef container;
    ContainerSource source = ContainerSource::SocketCgroup;
};

// A container seen running: its own cgroup v2 directory where it has one (cgroup v1 hosts only
// show containers through their processes).
struct RunningContainer {
    ContainerRef container;
    std::optional<ContainerCgroup> cgroup;
};

struct AttributorOptions {
    std::optional<std::filesystem::path> cgroup2_mount;  // nullopt: by process only
    std::filesystem::path proc_root = "/proc";
    std::optional<EcsAgentEndpoint> ecs_agent = EcsAgentEndpoint{};  // nullopt: never ask
    // A container the agent does not list triggers a new request at most this often, so that a
    // host without an agent, or with containers ECS does not run, costs one request a period.
    std::chrono::milliseconds ecs_refresh_interval{30'000};
};

// Attribution of connections to containers, for `record`: the socket's cgroup first, then the
// owning process's cgroups, each annotated from the ECS agent where it answers. Answers are
// cached by cgroup id and by pid, so asking when a connection is first seen (while its
// container and process still exist) makes the answer hold when its record is written.
class ContainerAttributor {
public:
    explicit ContainerAttributor(AttributorOptions options);

    std::optional<ContainerAttribution> container_of(uint64_t cgroup_id,
                                                     std::optional<uint32_t> pid);
    // The cgroup's path below the mount, for records of sockets outside containers.
    std::optional<std::string> cgroup_path(uint64_t cgroup_id);

    // Every container with a cgroup v2 directory or a process, once each (by runtime and id).
    std::vector<RunningContainer> running_containers();

private:
    std::optional<ContainerRef> of_socket_cgroup(uint64_t cgroup_id);
    std::optional<ContainerRef> of_process(uint32_t pid);
    void annotate(ContainerRef& container);

    AttributorOptions options_;
    std::optional<CgroupResolver> resolver_;
    std::unordered_map<uint64_t, std::optional<ContainerRef>> by_cgroup_id_;
    // Kept for the recording, so that a connection written after its process exited keeps the
    // answer read while it ran (a reused pid would inherit it: rare within one recording).
    std::unordered_map<uint32_t, std::optional<ContainerRef>> by_pid_;
    EcsTaskIndex ecs_tasks_;
    std::optional<std::chrono::steady_clock::time_point> last_ecs_fetch_;
};

// --pid N keeps the sockets of N and of its descendants. Ancestry comes from the ppid chain in
// /proc/<pid>/stat when a pid is first asked about, and the answer is kept for the recording (a
// process that has exited by then is not known to descend from N).
class ProcessFamily {
public:
    explicit ProcessFamily(uint32_t root_pid, std::filesystem::path proc_root = "/proc");
    bool contains(uint32_t pid);

private:
    std::optional<uint32_t> parent_of(uint32_t pid) const;

    uint32_t root_pid_;
    std::filesystem::path proc_root_;
    std::unordered_map<uint32_t, bool> verdicts_;
};

// The parent pid from the text of /proc/<pid>/stat ("42 (node server) S 1 …"; the command may
// hold spaces and parentheses).
std::optional<uint32_t> parent_pid_from_stat(std::string_view stat);

// --netns PATH_OR_INODE: a network namespace's inode, from a decimal inode number or a file that
// is a network namespace (/proc/<pid>/ns/net, /run/netns/<name>). nullopt with the reason in
// `error` otherwise.
std::optional<uint32_t> netns_inode(std::string_view path_or_inode, std::string* error);

}  // namespace closetrace
