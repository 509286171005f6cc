// nats-server processes for the bridge's tests: each on 127.0.0.1, on ports picked at
// run time, with its store in the test's scratch directory, killed with SIGKILL and
// restarted on the same store and port. A 3-node JetStream cluster is three of them
// with routes to each other.
#ifndef FTM_NATS_TESTS_HARNESS_HPP
#define FTM_NATS_TESTS_HARNESS_HPP

#include <fmt/format.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef FTM_NATS_SERVER
#define FTM_NATS_SERVER "nats-server"
#endif

namespace ftm_nats_test {

inline bool port_open(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(static_cast<std::uint16_t>(port));
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0;
  ::close(fd);
  return ok;
}

/// A TCP port on 127.0.0.1 that was free a moment ago, from 20000-31999: below the
/// kernel's ephemeral range (32768 and up), so that a port a killed nats-server leaves
/// free for its restart is not handed to another test's bind(0) meanwhile. Never the
/// same port twice in one process: a cluster picks its nine ports before any server
/// binds one, so "free a moment ago" alone could give two members the same port.
inline int free_port() {
  static std::mt19937 rng(std::random_device{}() ^ static_cast<unsigned>(::getpid()));
  static std::set<int> given;
  for (int attempt = 0; attempt < 1000; ++attempt) {
    const int port = 20000 + static_cast<int>(rng() % 12000);
    if (given.contains(port)) continue;
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = htons(static_cast<std::uint16_t>(port));
    const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0;
    ::close(fd);
    if (ok && !port_open(port)) {
      given.insert(port);
      return port;
    }
  }
  throw std::runtime_error("no free port in 20000-31999");
}

/// One nats-server with JetStream, a child of the test in its own process group.
class nats_server {
 public:
  /// `cluster`: the cluster ports of every member (this one's included), or empty.
  nats_server(std::filesystem::path dir, std::string name, int port = free_port(),
              int cluster_port = 0, std::vector<int> cluster = {})
      : dir_(std::move(dir)),
        name_(std::move(name)),
        port_(port),
        cluster_port_(cluster_port),
        cluster_(std::move(cluster)) {
    std::filesystem::create_directories(dir_ / "store");
    if (cluster_port_ != 0) {
      std::ofstream conf(dir_ / "server.conf");
      conf << "server_name: " << name_ << "\n"
           << "listen: 127.0.0.1:" << port_ << "\n"
           << "http: 127.0.0.1:" << monitor_port_ << "\n"
           << "jetstream { store_dir: \"" << (dir_ / "store").string() << "\" }\n"
           << "cluster {\n  name: ftm\n  listen: 127.0.0.1:" << cluster_port_ << "\n  routes: [\n";
      for (int p : cluster_)
        if (p != cluster_port_) conf << "    nats-route://127.0.0.1:" << p << "\n";
      conf << "  ]\n}\n";
    }
  }
  nats_server(const nats_server&) = delete;
  nats_server& operator=(const nats_server&) = delete;
  ~nats_server() { kill9(); }

  [[nodiscard]] std::string url() const { return fmt::format("nats://127.0.0.1:{}", port_); }
  [[nodiscard]] pid_t pid() const { return pid_; }
  [[nodiscard]] bool running() const { return pid_ > 0; }
  [[nodiscard]] const std::string& name() const { return name_; }

  /// Starts it and waits (at most 30 s) until its client port answers.
  void start() {
    if (pid_ > 0) return;
    std::vector<std::string> argv;
    if (cluster_port_ != 0) {
      argv = {FTM_NATS_SERVER, "-c", (dir_ / "server.conf").string()};
    } else {
      argv = {
          FTM_NATS_SERVER,       "-js", "-sd", (dir_ / "store").string(), "-a", "127.0.0.1", "-p",
          std::to_string(port_), "-n",  name_};
    }
    const std::string log = (dir_ / "server.log").string();
    // posix_spawn, not fork: the caller has threads, and a forked child that allocates
    // before exec can hang on a lock another thread held (ASan's allocator has no fork
    // handler). Its own process group, so that kill9 reaches all of it.
    std::vector<char*> a;
    for (auto& s : argv)
      a.push_back(s.data());
    a.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawnattr_t attr;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    posix_spawnattr_init(&attr);
    posix_spawnattr_setpgroup(&attr, 0);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);
    const int rc = ::posix_spawn(&pid_, a[0], &actions, &attr, a.data(), environ);
    posix_spawnattr_destroy(&attr);
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0) {
      pid_ = -1;
      throw std::runtime_error(fmt::format("cannot start {}: {}", a[0], std::strerror(rc)));
    }
    ++starts_;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (!port_open(port_)) {
      int st = 0;
      if (::waitpid(pid_, &st, WNOHANG) == pid_) {
        pid_ = -1;
        throw std::runtime_error(fmt::format("nats-server {} exited at start; see {}", name_, log));
      }
      if (std::chrono::steady_clock::now() > deadline)
        throw std::runtime_error(fmt::format("nats-server {} did not open its port", name_));
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }

  /// SIGKILL, and reap it.
  void kill9() {
    if (pid_ <= 0) return;
    ::kill(-pid_, SIGKILL);
    ::kill(pid_, SIGKILL);
    int st = 0;
    ::waitpid(pid_, &st, 0);
    pid_ = -1;
  }

  [[nodiscard]] int starts() const { return starts_; }

  /// GET `path` from the monitoring port (cluster members only); empty on failure.
  [[nodiscard]] std::string http_get(const std::string& path) const {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(static_cast<std::uint16_t>(monitor_port_));
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    std::string out;
    timeval tv{2, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0) {
      const std::string req =
          "GET " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
      if (::write(fd, req.data(), req.size()) == static_cast<ssize_t>(req.size())) {
        char buf[4096];
        for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;)
          out.append(buf, static_cast<std::size_t>(n));
      }
    }
    ::close(fd);
    return out;
  }

 private:
  std::filesystem::path dir_;
  std::string name_;
  int port_;
  int cluster_port_;
  std::vector<int> cluster_;
  int monitor_port_ = free_port();
  pid_t pid_ = -1;
  int starts_ = 0;
};

/// Three nats-servers forming one JetStream cluster.
class nats_cluster {
 public:
  explicit nats_cluster(const std::filesystem::path& dir) {
    std::vector<int> cluster_ports = {free_port(), free_port(), free_port()};
    for (int i = 0; i < 3; ++i) {
      servers_.push_back(std::make_unique<nats_server>(dir / fmt::format("n{}", i),
                                                       fmt::format("n{}", i), free_port(),
                                                       cluster_ports[i], cluster_ports));
    }
  }
  void start() {
    for (auto& s : servers_)
      s->start();
  }
  [[nodiscard]] std::vector<std::string> urls() const {
    std::vector<std::string> out;
    for (const auto& s : servers_)
      out.push_back(s->url());
    return out;
  }
  nats_server& operator[](std::size_t i) { return *servers_[i]; }

  /// The name of the server that leads the stream `stream`, as a live member reports
  /// it; empty if none knows.
  std::string leader_of(const std::string& stream) {
    for (auto& s : servers_) {
      if (!s->running()) continue;
      const std::string body = s->http_get("/jsz?accounts=true&streams=true");
      // Pretty-printed JSON: "name": "FTM_B", ... "cluster": { ... "leader": "n1"
      const std::size_t at = body.find("\"" + stream + "\"");
      if (at == std::string::npos) continue;
      const std::size_t l = body.find("\"leader\":", at);
      if (l == std::string::npos) continue;
      const std::size_t b = body.find('"', l + 9) + 1;
      const std::size_t e = body.find('"', b);
      if (e != std::string::npos && e > b) return body.substr(b, e - b);
    }
    return {};
  }
  /// The index of the member named `name`, or size() if none.
  std::size_t index_of(const std::string& name) const {
    for (std::size_t i = 0; i < servers_.size(); ++i)
      if (servers_[i]->name() == name) return i;
    return servers_.size();
  }
  [[nodiscard]] std::size_t size() const { return servers_.size(); }

 private:
  std::vector<std::unique_ptr<nats_server>> servers_;
};

}  // namespace ftm_nats_test

#endif
