#include "closetrace/container.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

namespace closetrace {
namespace {

namespace fs = std::filesystem;

// Container ids as runtimes write them: 64 lowercase hex digits.
const std::string kDockerId = "9581a69a761a557fbfce1d0f6745e4af5b9dbfb86b6b2c5c4df156f1a5932ff1";
const std::string kOtherId = "bf25c5c5b2d4dba68846c7236e75b6915e1e778d31611e3c6a06831e39814a15";
const std::string kInnerId = "79c796ed2a7f864f485c76f83f3165488097279d296a7c05bd5201a1c69b2920";
const std::string kTaskId = "4a2c8e3b7c0d4f7a9b1e2d3c4b5a6978";
const std::string kOldTaskId = "e01d58a8-151b-40e8-bc01-22647b9ecfec";
const std::string kPodUid = "0f3c1e2a-5b6d-4e7f-8a9b-0c1d2e3f4a5b";

ContainerRef docker(const std::string& id) {
    return {.runtime = "docker", .id = id};
}

// ---- cgroup path shapes ----

TEST(ContainerFromCgroupPath, DockerOnCgroupV1) {
    EXPECT_EQ(container_from_cgroup_path("/docker/" + kDockerId), docker(kDockerId));
}

TEST(ContainerFromCgroupPath, EcsOnAmazonLinux2) {
    const auto container = container_from_cgroup_path("/ecs/" + kTaskId + "/" + kDockerId);
    ASSERT_TRUE(container);
    EXPECT_EQ(container->runtime, "ecs");
    EXPECT_EQ(container->id, kDockerId);
    EXPECT_EQ(container->task_id, kTaskId);
    EXPECT_FALSE(container->name);
}

TEST(ContainerFromCgroupPath, EcsWithOldUuidTaskId) {
    const auto container = container_from_cgroup_path("/ecs/" + kOldTaskId + "/" + kDockerId);
    ASSERT_TRUE(container);
    EXPECT_EQ(container->runtime, "ecs");
    EXPECT_EQ(container->task_id, kOldTaskId);
}

TEST(ContainerFromCgroupPath, EcsTaskCgroupAloneIsNoContainer) {
    EXPECT_FALSE(container_from_cgroup_path("/ecs/" + kTaskId));
    EXPECT_FALSE(container_from_cgroup_path("/ecs"));
}

TEST(ContainerFromCgroupPath, EcsTaskSliceOnAmazonLinux2023) {
    const auto container = container_from_cgroup_path("/ecstasks.slice/ecstasks-" + kTaskId +
                                                      ".slice/docker-" + kDockerId + ".scope");
    ASSERT_TRUE(container);
    EXPECT_EQ(container->runtime, "ecs");
    EXPECT_EQ(container->id, kDockerId);
    EXPECT_EQ(container->task_id, kTaskId);
}

TEST(ContainerFromCgroupPath, DockerScopeOnCgroupV2) {
    EXPECT_EQ(container_from_cgroup_path("/system.slice/docker-" + kDockerId + ".scope"),
              docker(kDockerId));
}

TEST(ContainerFromCgroupPath, CgroupNestedInsideAContainerBelongsToIt) {
    EXPECT_EQ(container_from_cgroup_path("/system.slice/docker-" + kDockerId + ".scope/init.scope"),
              docker(kDockerId));
    // systemd running inside the container: the container, not its service.
    EXPECT_EQ(container_from_cgroup_path("/system.slice/docker-" + kDockerId +
                                         ".scope/system.slice/nginx.service"),
              docker(kDockerId));
}

TEST(ContainerFromCgroupPath, OutermostContainerWins) {
    EXPECT_EQ(container_from_cgroup_path("/system.slice/docker-" + kDockerId + ".scope/docker/" +
                                         kInnerId),
              docker(kDockerId));
}

TEST(ContainerFromCgroupPath, ContainerdScopes) {
    const ContainerRef hex{.runtime = "containerd", .id = kDockerId};
    EXPECT_EQ(container_from_cgroup_path("/system.slice/containerd-" + kDockerId + ".scope"), hex);
    EXPECT_EQ(container_from_cgroup_path("/system.slice/nerdctl-" + kDockerId + ".scope"), hex);
    EXPECT_EQ(container_from_cgroup_path("/system.slice/cri-containerd-" + kDockerId + ".scope"),
              hex);
    // ctr lets users name containers.
    const ContainerRef named{.runtime = "containerd", .id = "redis-1"};
    EXPECT_EQ(container_from_cgroup_path("/system.slice/containerd-redis-1.scope"), named);
}

TEST(ContainerFromCgroupPath, KubernetesSystemdDriver) {
    std::string uid_in_slice = kPodUid;
    std::replace(uid_in_slice.begin(), uid_in_slice.end(), '-', '_');
    const auto container = container_from_cgroup_path(
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uid_in_slice +
        ".slice/cri-containerd-" + kDockerId + ".scope");
    ASSERT_TRUE(container);
    EXPECT_EQ(container->runtime, "kubernetes");
    EXPECT_EQ(container->id, kDockerId);
    EXPECT_EQ(container->pod_uid, kPodUid);

    // Guaranteed QoS pods sit directly below kubepods.slice.
    const auto guaranteed =
        container_from_cgroup_path("/kubepods.slice/kubepods-pod" + uid_in_slice +
                                   ".slice/cri-containerd-" + kDockerId + ".scope");
    ASSERT_TRUE(guaranteed);
    EXPECT_EQ(guaranteed->runtime, "kubernetes");
    EXPECT_EQ(guaranteed->pod_uid, kPodUid);
}

TEST(ContainerFromCgroupPath, KubernetesCgroupfsDriver) {
    const auto container =
        container_from_cgroup_path("/kubepods/burstable/pod" + kPodUid + "/" + kDockerId);
    ASSERT_TRUE(container);
    EXPECT_EQ(container->runtime, "kubernetes");
    EXPECT_EQ(container->id, kDockerId);
    EXPECT_EQ(container->pod_uid, kPodUid);
}

TEST(ContainerFromCgroupPath, SystemdServices) {
    const ContainerRef nginx{.runtime = "systemd", .id = "nginx.service", .name = "nginx"};
    EXPECT_EQ(container_from_cgroup_path("/system.slice/nginx.service"), nginx);
    // The runtime's own daemon is a service, not a container.
    EXPECT_EQ(container_from_cgroup_path("/system.slice/docker.service")->id, "docker.service");
    // The deepest service: a user's service below the user manager's.
    EXPECT_EQ(container_from_cgroup_path(
                  "/user.slice/user-1000.slice/user@1000.service/app.slice/node-api.service")
                  ->id,
              "node-api.service");
    EXPECT_EQ(
        container_from_cgroup_path("/system.slice/system-getty.slice/getty@tty1.service")->name,
        "getty@tty1");
}

TEST(ContainerFromCgroupPath, NoContainer) {
    EXPECT_FALSE(container_from_cgroup_path("/"));
    EXPECT_FALSE(container_from_cgroup_path(""));
    EXPECT_FALSE(container_from_cgroup_path("/init.scope"));
    EXPECT_FALSE(container_from_cgroup_path("/user.slice/user-1000.slice/session-3.scope"));
    EXPECT_FALSE(container_from_cgroup_path("/process_api/987150be733f8c95119786653974851a"));
    // A bare id under a parent no runtime uses.
    EXPECT_FALSE(container_from_cgroup_path("/machine/" + kDockerId));
}

TEST(ContainerFromCgroupPath, MalformedShapes) {
    EXPECT_FALSE(container_from_cgroup_path("/docker/not-an-id"));
    EXPECT_FALSE(container_from_cgroup_path("/docker/" + kDockerId.substr(1)));  // 63 digits
    std::string upper = kDockerId;
    std::transform(upper.begin(), upper.end(), upper.begin(), ::toupper);
    EXPECT_FALSE(container_from_cgroup_path("/docker/" + upper));
    EXPECT_FALSE(container_from_cgroup_path("/system.slice/docker-.scope"));
    EXPECT_FALSE(container_from_cgroup_path("/system.slice/docker-" + kDockerId + ".scope.bak"));
    EXPECT_FALSE(container_from_cgroup_path("/system.slice/docker-" + kDockerId));
    EXPECT_FALSE(container_from_cgroup_path("/system.slice/containerd-a/b.scope"));
    EXPECT_FALSE(container_from_cgroup_path("/ecs/not-a-task/" + kDockerId));
    EXPECT_FALSE(container_from_cgroup_path("/system.slice/.service"));
    // An ECS task slice with a bad task id does not make its container an ECS one.
    EXPECT_EQ(container_from_cgroup_path("/ecstasks.slice/ecstasks-zzz.slice/docker-" + kDockerId +
                                         ".scope"),
              docker(kDockerId));
}

TEST(ContainerFromCgroupPath, ToleratesRedundantSlashesAndNamespacedViews) {
    EXPECT_EQ(container_from_cgroup_path("//system.slice//docker-" + kDockerId + ".scope/"),
              docker(kDockerId));
    // A reader in a private cgroup namespace sees other cgroups through "..".
    EXPECT_EQ(container_from_cgroup_path("/../../system.slice/docker-" + kDockerId + ".scope"),
              docker(kDockerId));
}

// ---- /proc/<pid>/cgroup ----

// Amazon Linux 2 ECS container instance: cgroup v1 only, no v2 line.
std::string al2_ecs_proc_cgroup() {
    const std::string path = "/ecs/" + kTaskId + "/" + kDockerId;
    return "11:hugetlb:" + path + "\n10:pids:" + path + "\n9:devices:" + path +
           "\n8:net_cls,net_prio:" + path + "\n7:freezer:" + path + "\n6:perf_event:" + path +
           "\n5:cpuset:" + path + "\n4:blkio:" + path + "\n3:memory:" + path +
           "\n2:cpu,cpuacct:" + path + "\n1:name=systemd:" + path + "\n";
}

TEST(ProcCgroup, ParsesV1AndV2Lines) {
    const auto lines =
        parse_proc_cgroup("12:cpu,cpuacct:/docker/" + kDockerId + "\n1:name=systemd:/docker/" +
                          kDockerId + "\n0::/system.slice/containerd.service\n");
    ASSERT_EQ(lines.size(), 3u);
    EXPECT_EQ(lines[0].hierarchy_id, 12u);
    EXPECT_EQ(lines[0].controllers, "cpu,cpuacct");
    EXPECT_EQ(lines[0].path, "/docker/" + kDockerId);
    EXPECT_EQ(lines[1].controllers, "name=systemd");
    EXPECT_EQ(lines[2].hierarchy_id, 0u);
    EXPECT_EQ(lines[2].controllers, "");
    EXPECT_EQ(lines[2].path, "/system.slice/containerd.service");
}

TEST(ProcCgroup, AmazonLinux2EcsTask) {
    const auto container = container_from_proc_cgroup(al2_ecs_proc_cgroup());
    ASSERT_TRUE(container);
    EXPECT_EQ(container->runtime, "ecs");
    EXPECT_EQ(container->id, kDockerId);
    EXPECT_EQ(container->task_id, kTaskId);
}

TEST(ProcCgroup, AmazonLinux2023) {
    EXPECT_EQ(container_from_proc_cgroup("0::/ecstasks.slice/ecstasks-" + kTaskId +
                                         ".slice/docker-" + kDockerId + ".scope\n")
                  ->runtime,
              "ecs");
    EXPECT_EQ(container_from_proc_cgroup("0::/system.slice/docker-" + kDockerId + ".scope\n"),
              docker(kDockerId));
    const ContainerRef nginx{.runtime = "systemd", .id = "nginx.service", .name = "nginx"};
    EXPECT_EQ(container_from_proc_cgroup("0::/system.slice/nginx.service\n"), nginx);
}

TEST(ProcCgroup, HybridHostPrefersTheContainerOverTheRuntimesService) {
    // Docker with the cgroupfs driver on a systemd hybrid host: the v2 line shows only where
    // containerd left the process.
    const std::string content = "4:memory:/docker/" + kDockerId + "\n1:name=systemd:/docker/" +
                                kDockerId + "\n0::/system.slice/containerd.service\n";
    EXPECT_EQ(container_from_proc_cgroup(content), docker(kDockerId));
}

TEST(ProcCgroup, HostProcessIsNoContainer) {
    // This shape is what a sandboxed CI host shows: an unrecognised v1 path and the v2 root.
    EXPECT_FALSE(
        container_from_proc_cgroup("9:name=systemd:/\n4:memory:/process_api/"
                                   "987150be733f8c95119786653974851a\n1:cpu:/\n0::/\n"));
    EXPECT_FALSE(container_from_proc_cgroup("0::/user.slice/user-1000.slice/session-2.scope\n"));
}

TEST(ProcCgroup, DeletedCgroupKeepsItsPath) {
    const auto lines =
        parse_proc_cgroup("0::/system.slice/docker-" + kDockerId + ".scope (deleted)\n");
    ASSERT_EQ(lines.size(), 1u);
    EXPECT_EQ(lines[0].path, "/system.slice/docker-" + kDockerId + ".scope");
}

TEST(ProcCgroup, MalformedLinesAreSkipped) {
    EXPECT_TRUE(parse_proc_cgroup("").empty());
    EXPECT_TRUE(parse_proc_cgroup("garbage\n\n4:memory\nx:memory:/docker/a\n:memory:/a\n"
                                  "4:memory:relative/path\n-1::/a\n")
                    .empty());
    const auto lines = parse_proc_cgroup("junk\n0::/a:b\nno newline at the end:x:/y");
    ASSERT_EQ(lines.size(), 1u);
    EXPECT_EQ(lines[0].path, "/a:b");
    EXPECT_FALSE(container_from_proc_cgroup("\x01\x02\xff:::\n"));
}

// ---- Temporary trees standing in for /proc/mounts, cgroup mounts and /proc ----

class TempDir {
public:
    TempDir() {
        std::string pattern = (fs::temp_directory_path() / "closetrace-container-XXXXXX").string();
        path_ = ::mkdtemp(pattern.data());
    }
    ~TempDir() {
        std::error_code ignored;
        fs::remove_all(path_, ignored);
    }
    const fs::path& path() const { return path_; }

private:
    fs::path path_;
};

void write_file(const fs::path& path, const std::string& content) {
    fs::create_directories(path.parent_path());
    std::ofstream(path) << content;
}

uint64_t inode_of(const fs::path& path) {
    struct stat info {};
    EXPECT_EQ(::stat(path.c_str(), &info), 0) << path;
    return info.st_ino;
}

TEST(FindCgroup2Mount, FromAHybridHostsMounts) {
    TempDir dir;
    const fs::path unified = dir.path() / "unified";
    fs::create_directories(unified);
    write_file(dir.path() / "mounts",
               "tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0\n"
               "cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0\n"
               "cgroup2 " +
                   unified.string() + " cgroup2 rw,relatime 0 0\n");
    EXPECT_EQ(find_cgroup2_mount(dir.path() / "mounts"), unified);
}

TEST(FindCgroup2Mount, NoneMountedOrUnreadable) {
    TempDir dir;
    write_file(dir.path() / "mounts", "cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n");
    EXPECT_FALSE(find_cgroup2_mount(dir.path() / "mounts"));
    EXPECT_FALSE(find_cgroup2_mount(dir.path() / "missing"));
}

TEST(FindCgroup2Mount, PrefersTheHierarchysRootOverANamespacedMount) {
    TempDir dir;
    const fs::path namespaced = dir.path() / "sys-fs-cgroup";
    const fs::path host = dir.path() / "host cgroup";  // written escaped in /proc/mounts
    write_file(namespaced / "cgroup.events", "populated 1\nfrozen 0\n");
    fs::create_directories(host);
    write_file(dir.path() / "mounts", "cgroup2 " + namespaced.string() +
                                          " cgroup2 rw,nsdelegate 0 0\n"
                                          "cgroup2 " +
                                          (dir.path() / "host\\040cgroup").string() +
                                          " cgroup2 ro 0 0\n");
    EXPECT_EQ(find_cgroup2_mount(dir.path() / "mounts"), host);

    write_file(host / "cgroup.events", "populated 1\n");
    EXPECT_EQ(find_cgroup2_mount(dir.path() / "mounts"), namespaced) << "no root: the first";
}

// A cgroup v2 hierarchy in miniature.
class CgroupTree : public ::testing::Test {
protected:
    fs::path make(const std::string& cgroup_path) {
        const fs::path directory = tree_.path() / cgroup_path.substr(1);
        fs::create_directories(directory);
        return directory;
    }
    uint64_t id_of(const std::string& cgroup_path) { return inode_of(make(cgroup_path)); }

    const std::string docker_scope_ = "/system.slice/docker-" + kDockerId + ".scope";
    const std::string ecs_scope_ =
        "/ecstasks.slice/ecstasks-" + kTaskId + ".slice/docker-" + kOtherId + ".scope";
    const std::string nginx_ = "/system.slice/nginx.service";
    TempDir tree_;
};

TEST_F(CgroupTree, ResolvesIdsToPaths) {
    const uint64_t docker_id = id_of(docker_scope_);
    const uint64_t ecs_id = id_of(ecs_scope_);
    CgroupResolver resolver(tree_.path());
    EXPECT_EQ(resolver.path_of(docker_id), docker_scope_);
    EXPECT_EQ(resolver.path_of(ecs_id), ecs_scope_);
    EXPECT_EQ(resolver.path_of(inode_of(tree_.path())), "/");
    EXPECT_EQ(resolver.walks(), 1u) << "one walk serves every cgroup that existed";
}

TEST_F(CgroupTree, NewCgroupsAreFoundByAnotherWalk) {
    id_of(docker_scope_);
    CgroupResolver resolver(tree_.path());
    EXPECT_TRUE(resolver.path_of(inode_of(tree_.path())));
    const uint64_t later = id_of(nginx_);
    EXPECT_EQ(resolver.path_of(later), nginx_);
    EXPECT_EQ(resolver.walks(), 2u);
    EXPECT_EQ(resolver.path_of(later), nginx_);
    EXPECT_EQ(resolver.walks(), 2u) << "cached";
}

TEST_F(CgroupTree, RemovedCgroupsCostOneWalk) {
    const fs::path gone = make("/system.slice/short-lived.scope");
    const uint64_t gone_id = inode_of(gone);
    fs::remove(gone);
    CgroupResolver resolver(tree_.path());
    EXPECT_FALSE(resolver.path_of(gone_id));
    EXPECT_FALSE(resolver.path_of(gone_id));
    EXPECT_EQ(resolver.walks(), 1u);
}

TEST_F(CgroupTree, RemovedCgroupsKeepThePathSeenBefore) {
    const fs::path crashed = make(docker_scope_);
    const uint64_t crashed_id = inode_of(crashed);
    CgroupResolver resolver(tree_.path());
    EXPECT_EQ(resolver.path_of(crashed_id), docker_scope_);
    // Created before the removal: tmpfs, unlike the cgroup file system, reuses inode numbers.
    const uint64_t later = id_of(nginx_);
    fs::remove(crashed);
    EXPECT_EQ(resolver.path_of(later), nginx_);
    EXPECT_EQ(resolver.walks(), 2u);
    EXPECT_EQ(resolver.path_of(crashed_id), docker_scope_) << "its late records still resolve";
    for (const auto& cgroup : resolver.containers()) EXPECT_NE(cgroup.path, docker_scope_);
}

TEST_F(CgroupTree, ListsContainersOwnCgroupsOnly) {
    const uint64_t docker_id = id_of(docker_scope_);
    const uint64_t ecs_id = id_of(ecs_scope_);
    const uint64_t nginx_id = id_of(nginx_);
    const uint64_t v1_ecs_id = id_of("/ecs/" + kTaskId + "/" + kInnerId);
    make(docker_scope_ + "/init.scope");
    make("/user.slice/user-1000.slice/session-2.scope");
    write_file(tree_.path() / "system.slice" / "cgroup.procs", "");

    CgroupResolver resolver(tree_.path());
    const auto containers = resolver.containers();
    ASSERT_EQ(containers.size(), 4u);
    EXPECT_EQ(containers[0].path, "/ecs/" + kTaskId + "/" + kInnerId);
    EXPECT_EQ(containers[0].cgroup_id, v1_ecs_id);
    EXPECT_EQ(containers[0].container.runtime, "ecs");
    EXPECT_EQ(containers[1].path, ecs_scope_);
    EXPECT_EQ(containers[1].cgroup_id, ecs_id);
    EXPECT_EQ(containers[1].container.task_id, kTaskId);
    EXPECT_EQ(containers[2].path, docker_scope_);
    EXPECT_EQ(containers[2].cgroup_id, docker_id);
    EXPECT_EQ(containers[2].container, docker(kDockerId));
    EXPECT_EQ(containers[3].path, nginx_);
    EXPECT_EQ(containers[3].cgroup_id, nginx_id);
}

TEST(CgroupResolver, MissingMount) {
    CgroupResolver resolver("/nonexistent/closetrace/cgroup");
    EXPECT_FALSE(resolver.path_of(1));
    EXPECT_TRUE(resolver.containers().empty());
}

// ---- The ECS agent's introspection answer ----

// The shape AWS documents for GET /v1/tasks, plus what newer agents add (Ports, Networks), a
// task in the older ARN format and a container not yet created.
std::string agent_tasks_json() {
    return R"({
  "Tasks": [
    {
      "Arn": "arn:aws:ecs:us-west-2:012345678910:task/default/)" +
           kTaskId + R"(",
      "DesiredStatus": "RUNNING",
      "KnownStatus": "RUNNING",
      "Family": "hello_world",
      "Version": "8",
      "Containers": [
        {"DockerId": ")" +
           kDockerId + R"(",
         "DockerName": "ecs-hello_world-8-mysql-fcae8ac8f9f1d89d8301", "Name": "mysql",
         "Ports": [{"ContainerPort": 3306, "Protocol": "tcp", "HostPort": 3306}]},
        {"DockerId": ")" +
           kOtherId + R"(",
         "DockerName": "ecs-hello_world-8-wordpress-e8bfddf9b488dff36c00", "Name": "wordpress",
         "Networks": [{"NetworkMode": "awsvpc", "IPv4Addresses": ["10.0.2.106"]}]}
      ]
    },
    {
      "Arn": "arn:aws:ecs:us-west-2:012345678910:task/)" +
           kOldTaskId + R"(",
      "DesiredStatus": "RUNNING",
      "KnownStatus": "PENDING",
      "Family": "nginx-efs",
      "Version": "2",
      "Containers": [
        {"DockerId": ")" +
           kInnerId + R"(", "DockerName": "ecs-nginx-efs-2-nginx-9ac0808dd0afa495f001",
         "Name": "nginx"},
        {"DockerId": "", "DockerName": "", "Name": "sidecar"}
      ]
    }
  ]
})";
}

TEST(EcsTasks, ParsesTheAgentsAnswer) {
    const auto index = parse_ecs_tasks(agent_tasks_json());
    ASSERT_TRUE(index);
    EXPECT_EQ(index->size(), 3u);
    const EcsContainer* mysql = index->find(kDockerId);
    ASSERT_TRUE(mysql);
    EXPECT_EQ(mysql->name, "mysql");
    EXPECT_EQ(mysql->task.task_arn, "arn:aws:ecs:us-west-2:012345678910:task/default/" + kTaskId);
    EXPECT_EQ(mysql->task.family, "hello_world");
    EXPECT_EQ(mysql->task.revision, "8");
    EXPECT_EQ(index->find(kOtherId)->name, "wordpress");
    EXPECT_EQ(index->find(kInnerId)->task.family, "nginx-efs");
    EXPECT_FALSE(index->find(kDockerId.substr(0, 12))) << "full ids only";
}

TEST(EcsTasks, EmptyAndMalformedAnswers) {
    EXPECT_EQ(parse_ecs_tasks(R"({"Tasks":[]})")->size(), 0u);
    EXPECT_EQ(parse_ecs_tasks(R"({"Tasks":null})")->size(), 0u);
    EXPECT_FALSE(parse_ecs_tasks(""));
    EXPECT_FALSE(parse_ecs_tasks("404 page not found"));
    EXPECT_FALSE(parse_ecs_tasks("[]"));
    EXPECT_FALSE(parse_ecs_tasks(R"({"Cluster":"default"})"));
    EXPECT_FALSE(parse_ecs_tasks(R"({"Tasks":{}})"));
    EXPECT_FALSE(parse_ecs_tasks(R"({"Tasks":[)"));
    // Entries without what identifies them are skipped, not fatal.
    const auto index = parse_ecs_tasks(
        R"({"Tasks":[1,{"Family":"no-arn","Containers":[{"DockerId":")" + kDockerId +
        R"("}]},{"Arn":"arn:aws:ecs:r:1:task/c/t","Containers":[{"DockerId":7},"x",{"DockerId":")" +
        kOtherId + R"(","Name":"ok"}]},{"Arn":"arn:aws:ecs:r:1:task/c/u","Containers":{}}]})");
    ASSERT_TRUE(index);
    EXPECT_EQ(index->size(), 1u);
    EXPECT_EQ(index->find(kOtherId)->name, "ok");
}

TEST(EcsTasks, AnnotatesAContainerTheAgentKnows) {
    const auto index = parse_ecs_tasks(agent_tasks_json());
    ContainerRef container = docker(kDockerId);
    annotate_with_ecs(container, *index);
    EXPECT_EQ(container.runtime, "ecs");
    EXPECT_EQ(container.name, "mysql");
    EXPECT_EQ(container.task_id, kTaskId) << "from the task ARN";
    ASSERT_TRUE(container.ecs);
    EXPECT_EQ(container.ecs->family, "hello_world");

    ContainerRef stranger = docker(std::string(64, 'a'));
    annotate_with_ecs(stranger, *index);
    EXPECT_EQ(stranger, docker(std::string(64, 'a')));
}

TEST(EcsTasks, MergeKeepsTasksTheAgentForgot) {
    auto index = *parse_ecs_tasks(agent_tasks_json());
    index.merge(*parse_ecs_tasks(R"({"Tasks":[{"Arn":"arn:aws:ecs:r:1:task/c/new","Family":"f",)"
                                 R"("Version":"9","Containers":[{"DockerId":")" +
                                 kDockerId + R"(","Name":"renamed"}]}]})"));
    EXPECT_EQ(index.size(), 3u);
    EXPECT_EQ(index.find(kDockerId)->name, "renamed");
    EXPECT_EQ(index.find(kOtherId)->name, "wordpress");
}

// ---- --container matching and report labels ----

TEST(ContainerMatches, IdPrefixesOfTwelveOrMoreHexDigits) {
    const ContainerRef container = docker(kDockerId);
    EXPECT_TRUE(container_matches(container, kDockerId));
    EXPECT_TRUE(container_matches(container, kDockerId.substr(0, 12)));
    EXPECT_TRUE(container_matches(container, "9581A69A761A")) << "case does not matter";
    EXPECT_FALSE(container_matches(container, kDockerId.substr(0, 11)));
    EXPECT_FALSE(container_matches(container, kOtherId.substr(0, 12)));
    EXPECT_FALSE(container_matches(container, ""));
}

TEST(ContainerMatches, NamesAndTasks) {
    ContainerRef container = docker(kDockerId);
    container.runtime = "ecs";
    container.name = "api";
    container.task_id = kTaskId;
    EXPECT_TRUE(container_matches(container, "api"));
    EXPECT_FALSE(container_matches(container, "ap"));
    EXPECT_FALSE(container_matches(container, "API"));
    EXPECT_TRUE(container_matches(container, kTaskId.substr(0, 12)));
    EXPECT_TRUE(container_matches(container, kTaskId));

    ContainerRef old_task = docker(kDockerId);
    old_task.task_id = kOldTaskId;
    EXPECT_TRUE(container_matches(old_task, kOldTaskId));

    const ContainerRef nginx{.runtime = "systemd", .id = "nginx.service", .name = "nginx"};
    EXPECT_TRUE(container_matches(nginx, "nginx"));
    EXPECT_TRUE(container_matches(nginx, "nginx.service"));
    EXPECT_FALSE(container_matches(nginx, "nginx.servic"));
}

TEST(ContainerLabel, ShortAndReadable) {
    EXPECT_EQ(container_label(std::nullopt), "-");
    EXPECT_EQ(container_label(docker(kDockerId)), "docker:9581a69a761a");
    ContainerRef ecs = docker(kDockerId);
    ecs.runtime = "ecs";
    ecs.name = "api";
    ecs.task_id = kTaskId;
    EXPECT_EQ(container_label(ecs), "ecs:api (task 4a2c8e3b7c0d)");
    EXPECT_EQ(
        container_label(ContainerRef{.runtime = "systemd", .id = "nginx.service", .name = "nginx"}),
        "systemd:nginx.service");
    EXPECT_EQ(container_label(ContainerRef{.runtime = "containerd", .id = "redis-1"}),
              "containerd:redis-1");
}

// ---- A fake ECS agent on loopback ----

// Serves canned answers on 127.0.0.1 (a free port), one per connection (the last repeats), and
// keeps the requests it read.
class FakeAgent {
public:
    struct Answer {
        std::vector<std::string> pieces;  // written one by one, with a pause between them
        bool close_after = true;          // false: keep the connection open (a lingering server)
        bool never_answer = false;
    };

    explicit FakeAgent(std::vector<Answer> answers) : answers_(std::move(answers)) {
        listener_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in address{};
        address.sin_family = AF_INET;
        address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        EXPECT_EQ(::bind(listener_, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
        EXPECT_EQ(::listen(listener_, 8), 0);
        socklen_t size = sizeof(address);
        ::getsockname(listener_, reinterpret_cast<sockaddr*>(&address), &size);
        port_ = ntohs(address.sin_port);
        server_ = std::thread([this] { serve(); });
    }
    ~FakeAgent() {
        stop_ = true;
        server_.join();
        ::close(listener_);
    }

    uint16_t port() const { return port_; }
    std::vector<std::string> requests() {
        std::lock_guard lock(mutex_);
        return requests_;
    }

private:
    void serve() {
        std::size_t served = 0;
        while (!stop_) {
            pollfd waiting{.fd = listener_, .events = POLLIN, .revents = 0};
            if (::poll(&waiting, 1, 20) <= 0) continue;
            const int connection = ::accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC);
            if (connection < 0) continue;
            const Answer& answer = answers_[std::min(served++, answers_.size() - 1)];
            std::string request;
            char buffer[4096];
            while (request.find("\r\n\r\n") == std::string::npos) {
                const ssize_t received = ::recv(connection, buffer, sizeof(buffer), 0);
                if (received <= 0) break;
                request.append(buffer, static_cast<std::size_t>(received));
            }
            {
                std::lock_guard lock(mutex_);
                requests_.push_back(request);
            }
            if (answer.never_answer) {
                while (!stop_) std::this_thread::sleep_for(std::chrono::milliseconds(10));
            }
            for (const auto& piece : answer.pieces) {
                ::send(connection, piece.data(), piece.size(), MSG_NOSIGNAL);
                std::this_thread::sleep_for(std::chrono::milliseconds(5));
            }
            if (!answer.close_after) {
                while (!stop_) std::this_thread::sleep_for(std::chrono::milliseconds(10));
            }
            ::close(connection);
        }
    }

    std::vector<Answer> answers_;
    int listener_ = -1;
    uint16_t port_ = 0;
    std::atomic<bool> stop_{false};
    std::mutex mutex_;
    std::vector<std::string> requests_;
    std::thread server_;
};

FakeAgent::Answer with_length(const std::string& body, int status = 200) {
    return {{fmt::format(
                 "HTTP/1.1 {} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                 status, body.size()),
             body}};
}

EcsAgentEndpoint endpoint_of(const FakeAgent& agent, int timeout_ms = 2000) {
    return {.port = agent.port(), .timeout = std::chrono::milliseconds(timeout_ms)};
}

TEST(FetchEcsTasks, ContentLength) {
    FakeAgent agent({with_length(agent_tasks_json())});
    std::string why_not;
    const auto index = fetch_ecs_tasks(endpoint_of(agent), &why_not);
    ASSERT_TRUE(index) << why_not;
    EXPECT_EQ(index->size(), 3u);
    const auto requests = agent.requests();
    ASSERT_EQ(requests.size(), 1u);
    EXPECT_TRUE(requests[0].starts_with("GET /v1/tasks HTTP/1.1\r\n")) << requests[0];
    EXPECT_NE(requests[0].find(fmt::format("\r\nHost: localhost:{}\r\n", agent.port())),
              std::string::npos);
}

TEST(FetchEcsTasks, ChunkedAcrossWrites) {
    // Go's net/http (the agent) sends larger answers chunked.
    const std::string body = agent_tasks_json();
    const std::size_t half = body.size() / 2;
    FakeAgent agent(
        {{{"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: "
           "application/json\r\n\r\n",
           fmt::format("{:x};ext=1\r\n{}\r\n", half, body.substr(0, half)),
           fmt::format("{:X}\r\n{}", body.size() - half, body.substr(half, 10)),
           body.substr(half + 10) + "\r\n", "0\r\n", "\r\n"}}});
    std::string why_not;
    const auto index = fetch_ecs_tasks(endpoint_of(agent), &why_not);
    ASSERT_TRUE(index) << why_not;
    EXPECT_EQ(index->size(), 3u);
}

TEST(FetchEcsTasks, BodyEndsAtClose) {
    FakeAgent agent({{{"HTTP/1.0 200 OK\r\n\r\n", agent_tasks_json()}}});
    EXPECT_EQ(fetch_ecs_tasks(endpoint_of(agent))->size(), 3u);
}

TEST(FetchEcsTasks, CompleteAnswerOnAnOpenConnection) {
    FakeAgent::Answer lingering = with_length(agent_tasks_json());
    lingering.close_after = false;
    FakeAgent agent({lingering});
    const auto started = std::chrono::steady_clock::now();
    EXPECT_TRUE(fetch_ecs_tasks(endpoint_of(agent, 5000)));
    EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(2))
        << "a complete answer must not wait for the close";
}

TEST(FetchEcsTasks, FailsSoft) {
    std::string why_not;
    {
        FakeAgent agent({with_length("404 page not found\n", 404)});
        EXPECT_FALSE(fetch_ecs_tasks(endpoint_of(agent), &why_not));
        EXPECT_NE(why_not.find("HTTP 404"), std::string::npos) << why_not;
    }
    {
        FakeAgent agent({with_length("{\"Cluster\":\"default\"}")});
        EXPECT_FALSE(fetch_ecs_tasks(endpoint_of(agent), &why_not));
        EXPECT_NE(why_not.find("not the ECS agent's task list"), std::string::npos) << why_not;
    }
    {
        FakeAgent agent({{{"SSH-2.0-OpenSSH_9.2\r\n"}}});
        EXPECT_FALSE(fetch_ecs_tasks(endpoint_of(agent), &why_not));
        EXPECT_NE(why_not.find("HTTP/1.x"), std::string::npos) << why_not;
    }
    {
        FakeAgent agent({{{"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"Tasks\":"}}});
        EXPECT_FALSE(fetch_ecs_tasks(endpoint_of(agent), &why_not)) << "cut short";
    }
    {
        FakeAgent agent({{{"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"}}});
        EXPECT_FALSE(fetch_ecs_tasks(endpoint_of(agent), &why_not)) << "bad chunk size";
    }
}

TEST(FetchEcsTasks, TimesOutOnASilentServer) {
    FakeAgent agent({{.pieces = {}, .close_after = true, .never_answer = true}});
    std::string why_not;
    const auto started = std::chrono::steady_clock::now();
    EXPECT_FALSE(fetch_ecs_tasks(endpoint_of(agent, 150), &why_not));
    const auto elapsed = std::chrono::steady_clock::now() - started;
    EXPECT_GE(elapsed, std::chrono::milliseconds(140));
    EXPECT_LT(elapsed, std::chrono::milliseconds(2000));
    EXPECT_NE(why_not.find("within 150 ms"), std::string::npos) << why_not;
}

TEST(FetchEcsTasks, NoAgentListening) {
    // A port that was free a moment ago: connecting is refused at once.
    const int probe = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::bind(probe, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
    socklen_t size = sizeof(address);
    ::getsockname(probe, reinterpret_cast<sockaddr*>(&address), &size);
    ::close(probe);
    std::string why_not;
    EXPECT_FALSE(fetch_ecs_tasks({.port = ntohs(address.sin_port)}, &why_not));
    EXPECT_NE(why_not.find("refused"), std::string::npos) << why_not;
}

// ---- Attribution for record ----

class Attribution : public CgroupTree {
protected:
    void write_proc(uint32_t pid, const std::string& cgroup, uint32_t parent = 1,
                    const std::string& command = "node") {
        write_file(proc_.path() / std::to_string(pid) / "cgroup", cgroup);
        write_file(proc_.path() / std::to_string(pid) / "stat",
                   fmt::format("{} ({}) S {} {} {} 0 -1 4194560", pid, command, parent, pid, pid));
    }
    AttributorOptions options(std::optional<EcsAgentEndpoint> agent = std::nullopt) {
        AttributorOptions result;
        result.cgroup2_mount = tree_.path();
        result.proc_root = proc_.path();
        result.ecs_agent = agent;
        return result;
    }
    TempDir proc_;
};

TEST_F(Attribution, FromTheSocketsCgroup) {
    const uint64_t cgroup_id = id_of(docker_scope_);
    ContainerAttributor attributor(options());
    const auto attribution = attributor.container_of(cgroup_id, std::nullopt);
    ASSERT_TRUE(attribution);
    EXPECT_EQ(attribution->container, docker(kDockerId));
    EXPECT_EQ(attribution->source, ContainerSource::SocketCgroup);
    EXPECT_EQ(attributor.cgroup_path(cgroup_id), docker_scope_);
}

TEST_F(Attribution, FromTheProcessOnACgroupV1Host) {
    // Amazon Linux 2: every socket is in the v2 root (or there is no v2 mount at all).
    write_proc(4242, al2_ecs_proc_cgroup());
    ContainerAttributor attributor(options());
    const auto attribution = attributor.container_of(inode_of(tree_.path()), 4242);
    ASSERT_TRUE(attribution);
    EXPECT_EQ(attribution->container.runtime, "ecs");
    EXPECT_EQ(attribution->container.id, kDockerId);
    EXPECT_EQ(attribution->source, ContainerSource::ProcessCgroup);

    AttributorOptions without_v2 = options();
    without_v2.cgroup2_mount.reset();
    ContainerAttributor by_process_only(without_v2);
    EXPECT_EQ(by_process_only.container_of(1, 4242)->container.id, kDockerId);
    EXPECT_FALSE(by_process_only.cgroup_path(1));
}

TEST_F(Attribution, FirstAnswersOutliveContainersAndProcesses) {
    const fs::path scope = make(docker_scope_);
    const uint64_t cgroup_id = inode_of(scope);
    write_proc(4242, al2_ecs_proc_cgroup());
    ContainerAttributor attributor(options());
    // Asked when the connection is first seen ...
    EXPECT_EQ(attributor.container_of(cgroup_id, std::nullopt)->container, docker(kDockerId));
    EXPECT_EQ(attributor.container_of(0, 4242)->container.id, kDockerId);
    // ... the container stops and the process exits before the record is written.
    fs::remove(scope);
    fs::remove_all(proc_.path() / "4242");
    EXPECT_EQ(attributor.container_of(cgroup_id, std::nullopt)->container, docker(kDockerId));
    const auto by_process = attributor.container_of(0, 4242);
    ASSERT_TRUE(by_process);
    EXPECT_EQ(by_process->container.task_id, kTaskId);
}

TEST_F(Attribution, ProcessContainerBeatsTheRuntimesServiceCgroup) {
    const uint64_t containerd_service = id_of("/system.slice/containerd.service");
    write_proc(4242, "4:memory:/docker/" + kDockerId + "\n0::/system.slice/containerd.service\n");
    ContainerAttributor attributor(options());
    const auto attribution = attributor.container_of(containerd_service, 4242);
    ASSERT_TRUE(attribution);
    EXPECT_EQ(attribution->container, docker(kDockerId));
    EXPECT_EQ(attribution->source, ContainerSource::ProcessCgroup);
}

TEST_F(Attribution, HostServicesAndHostProcesses) {
    const uint64_t nginx_id = id_of(nginx_);
    write_proc(77, "0::/system.slice/nginx.service\n");
    write_proc(78, "0::/user.slice/user-0.slice/session-1.scope\n");
    ContainerAttributor attributor(options());
    const auto nginx = attributor.container_of(nginx_id, 77);
    ASSERT_TRUE(nginx);
    EXPECT_EQ(nginx->container.id, "nginx.service");
    EXPECT_EQ(nginx->source, ContainerSource::SocketCgroup);
    EXPECT_FALSE(attributor.container_of(inode_of(tree_.path()), 78));
    EXPECT_FALSE(attributor.container_of(0, std::nullopt));
    EXPECT_FALSE(attributor.container_of(0, 99999)) << "an exited process";
}

TEST_F(Attribution, AnnotatedFromTheAgentAtMostOncePerInterval) {
    FakeAgent agent({with_length(agent_tasks_json())});
    const uint64_t mysql = id_of(docker_scope_);
    const uint64_t stranger = id_of("/system.slice/docker-" + std::string(64, 'c') + ".scope");
    const uint64_t nginx_id = id_of(nginx_);
    ContainerAttributor attributor(options(endpoint_of(agent)));

    const auto attribution = attributor.container_of(mysql, std::nullopt);
    ASSERT_TRUE(attribution);
    EXPECT_EQ(attribution->container.runtime, "ecs");
    EXPECT_EQ(attribution->container.name, "mysql");
    EXPECT_EQ(attribution->container.ecs->family, "hello_world");
    EXPECT_EQ(attributor.container_of(stranger, std::nullopt)->container.runtime, "docker");
    EXPECT_EQ(attributor.container_of(nginx_id, std::nullopt)->container.runtime, "systemd");
    EXPECT_EQ(attributor.container_of(mysql, std::nullopt)->container.name, "mysql");
    EXPECT_EQ(agent.requests().size(), 1u) << "the unknown container waits for the next interval";
}

TEST_F(Attribution, UnknownContainersAskAgainAfterTheInterval) {
    FakeAgent agent({with_length(R"({"Tasks":[]})"), with_length(agent_tasks_json())});
    const uint64_t mysql = id_of(docker_scope_);
    AttributorOptions immediate = options(endpoint_of(agent));
    immediate.ecs_refresh_interval = std::chrono::milliseconds(0);
    ContainerAttributor attributor(immediate);
    EXPECT_EQ(attributor.container_of(mysql, std::nullopt)->container.runtime, "docker");
    EXPECT_EQ(attributor.container_of(mysql, std::nullopt)->container.runtime, "ecs");
    EXPECT_EQ(agent.requests().size(), 2u);
}

TEST_F(Attribution, RunningContainersFromCgroupsAndProcesses) {
    FakeAgent agent({with_length(agent_tasks_json())});
    id_of(docker_scope_);
    id_of(nginx_);
    write_proc(10, "0::/system.slice/docker-" + kDockerId + ".scope\n");  // same as the cgroup
    write_proc(11, "4:memory:/docker/" + kOtherId + "\n0::/\n");
    write_proc(12, "0::/\n");
    write_file(proc_.path() / "self" / "cgroup", "0::/\n");

    ContainerAttributor attributor(options(endpoint_of(agent)));
    const auto running = attributor.running_containers();
    ASSERT_EQ(running.size(), 3u);
    EXPECT_EQ(running[0].container.name, "mysql");
    ASSERT_TRUE(running[0].cgroup);
    EXPECT_EQ(running[0].cgroup->path, docker_scope_);
    EXPECT_EQ(running[1].container.id, "nginx.service");
    EXPECT_EQ(running[2].container.name, "wordpress") << "a cgroup v1 container, by its process";
    EXPECT_FALSE(running[2].cgroup);
    EXPECT_EQ(agent.requests().size(), 1u);
}

// ---- --pid and --netns ----

TEST(ParentPidFromStat, CommandsWithSpacesAndParentheses) {
    EXPECT_EQ(parent_pid_from_stat("42 (node) S 1 42 42 0 -1"), 1u);
    EXPECT_EQ(parent_pid_from_stat("43 (node (worker) x) R 42 43 43 0"), 42u);
    EXPECT_EQ(parent_pid_from_stat("1 (init) S 0 1 1"), 0u);
    EXPECT_FALSE(parent_pid_from_stat(""));
    EXPECT_FALSE(parent_pid_from_stat("42 node S 1"));
    EXPECT_FALSE(parent_pid_from_stat("42 (node) S"));
    EXPECT_FALSE(parent_pid_from_stat("42 (node) S x 1"));
    EXPECT_FALSE(parent_pid_from_stat("42 (node) S 1x 1"));
}

TEST_F(Attribution, ProcessFamilyKeepsTheRootAndItsDescendants) {
    write_proc(1, "0::/\n", 0, "systemd");
    write_proc(100, "0::/\n", 1, "npm start");
    write_proc(101, "0::/\n", 100, "node (cluster)");
    write_proc(102, "0::/\n", 101, "node");
    write_proc(200, "0::/\n", 1, "nginx");
    write_file(proc_.path() / "103" / "stat", "garbage");
    ProcessFamily family(100, proc_.path());
    EXPECT_TRUE(family.contains(100));
    EXPECT_TRUE(family.contains(102));
    EXPECT_TRUE(family.contains(101));
    EXPECT_FALSE(family.contains(200));
    EXPECT_FALSE(family.contains(1));
    EXPECT_FALSE(family.contains(103));
    EXPECT_FALSE(family.contains(999)) << "exited";

    fs::remove_all(proc_.path() / "102");
    EXPECT_TRUE(family.contains(102)) << "kept for the recording";
}

TEST(NetnsInode, FromANamespaceFileOrANumber) {
    std::string error;
    struct stat own {};
    ASSERT_EQ(::stat("/proc/self/ns/net", &own), 0);
    EXPECT_EQ(netns_inode("/proc/self/ns/net", &error), own.st_ino) << error;
    EXPECT_EQ(netns_inode("4026531840", &error), 4026531840u);
}

TEST(NetnsInode, Rejects) {
    std::string error;
    EXPECT_FALSE(netns_inode("", &error));
    EXPECT_FALSE(netns_inode("0", &error));
    EXPECT_FALSE(netns_inode("99999999999", &error));
    EXPECT_NE(error.find("not a network namespace inode"), std::string::npos) << error;
    EXPECT_FALSE(netns_inode("/nonexistent/netns", &error));
    EXPECT_NE(error.find("No such file"), std::string::npos) << error;
    EXPECT_FALSE(netns_inode("/proc/self/ns/mnt", &error));
    EXPECT_NE(error.find("not a network namespace"), std::string::npos) << error;
    TempDir dir;
    write_file(dir.path() / "plain", "x");
    EXPECT_FALSE(netns_inode((dir.path() / "plain").string(), &error));
}

}  // namespace
}  // namespace closetrace
