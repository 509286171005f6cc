/// \file
/// The consumer test's program for the NATS bridge (consumer.nats): built against the
/// installed `ftm::nats`, it declares a node's bridge over a pool (the bridge's
/// header) and has libnats, through the installed library, fail to connect to a port
/// nobody listens on (the library and libnats linked). No nats-server is needed.

#include <ftm/engines/dual_bank.hpp>
#include <ftm/error.hpp>
#include <ftm/ftm.hpp>
#include <ftm/nats/bridge.hpp>
#include <ftm/nats/client.hpp>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

struct note {
  std::uint64_t value;
};

namespace {

/// A TCP port of 127.0.0.1 that was free a moment ago: nobody listens on it.
int closed_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  auto* any = reinterpret_cast<sockaddr*>(&addr);
  if (fd < 0 || ::bind(fd, any, sizeof addr) != 0 || ::getsockname(fd, any, &len) != 0) {
    std::perror("ftm consumer: socket");
    return -1;
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

}  // namespace

int main() {
  using namespace std::chrono_literals;
  ftm::engines::dual_bank pool{1 << 22};
  const auto outgoing =
      ftm::atomically(pool, [](auto& tx) { return ftm::make_port<note>(tx, {.capacity = 8}); });
  const int port = closed_port();
  if (port < 0) return 1;

  ftm::nats::node_options options;
  options.name = "consumer";
  options.nats.servers = {"nats://127.0.0.1:" + std::to_string(port)};
  options.nats.timeout = 200ms;
  ftm::nats::bridge<ftm::engines::dual_bank> bridge(options);
  bridge.bind(outgoing, "elsewhere", "inbox");

  try {
    const ftm::nats::client client(options.nats, 300ms);
    std::fprintf(stderr, "ftm consumer: connected to port %d, where nobody listens\n", port);
    return 1;
  } catch (const ftm::io_error& e) {
    if (std::string_view(e.what()).find("cannot connect") == std::string_view::npos) {
      std::fprintf(stderr, "ftm consumer: unexpected error: %s\n", e.what());
      return 1;
    }
    std::printf("ftm::nats said: %s\n", e.what());
  }
  std::puts("ftm consumer: ok (ftm::nats)");
  return 0;
}
