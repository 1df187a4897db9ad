// peer_common.h: what the test peers (ct_keepalive_server, ct_reuse_client) share.
//
// Each peer still builds with one compiler line and no dependencies beyond libc and libstdc++
// (tools/vm/kernel-check builds static copies for the 6.1 kernel's initramfs), so the shared
// pieces live here as inline functions, found next to the sources by #include "peer_common.h",
// rather than in a library that would need its own build step.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cerrno>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <string>
#include <string_view>

namespace ct_peer {

// A peer's name and synopsis; fail() prints both with the reason and exits 2.
struct Usage {
    const char* program;
    const char* synopsis;

    [[noreturn]] void fail(const char* why) const {
        std::fprintf(stderr, "%s: %s\nusage: %s\n", program, why, synopsis);
        std::exit(2);
    }
};

// Walks argv one option at a time; a missing or malformed value is a usage error named after
// the option it belongs to.
class Arguments {
public:
    Arguments(const Usage& usage, int argc, char** argv) : usage_(usage), argc_(argc), argv_(argv) {}

    // Moves to the next option; false when none is left.
    bool next() {
        if (++index_ >= argc_) return false;
        option_ = argv_[index_];
        return true;
    }

    std::string_view option() const { return option_; }

    // The argument after the current option (consumed).
    std::string_view value() {
        if (index_ + 1 >= argc_) fail((std::string(option_) + " needs a value").c_str());
        return argv_[++index_];
    }

    // value() as a whole number >= 0.
    int64_t number() {
        const std::string_view text = value();
        int64_t number = 0;
        auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), number);
        if (error != std::errc() || end != text.data() + text.size() || number < 0) {
            fail((std::string("bad value for ") + std::string(option_)).c_str());
        }
        return number;
    }

    // value() as a TCP port, 1..65535.
    uint16_t port() {
        const int64_t port = number();
        if (port == 0 || port > 65535) fail("--port must be 1..65535");
        return static_cast<uint16_t>(port);
    }

    // For an option no branch took: --help/-h asks for the usage, anything else is unknown.
    [[noreturn]] void help_or_unknown() const {
        if (option_ == "--help" || option_ == "-h") fail("help");
        fail((std::string("unknown argument ") + std::string(option_)).c_str());
    }

    [[noreturn]] void fail(const char* why) const { usage_.fail(why); }

private:
    const Usage& usage_;
    int argc_;
    char** argv_;
    int index_ = 0;
    std::string_view option_;
};

inline int64_t now_ns() {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

// AF_INET6 for an address with a colon, else AF_INET (numeric addresses only).
inline int address_family(const std::string& address) {
    return address.find(':') != std::string::npos ? AF_INET6 : AF_INET;
}

// Fills `socket_address` from a numeric address and a port; returns its length for bind() or
// connect(), or 0 when the text is not a numeric address of address_family(address).
inline socklen_t numeric_socket_address(const std::string& address, uint16_t port,
                                        sockaddr_storage& socket_address) {
    socket_address = {};
    if (address_family(address) == AF_INET6) {
        auto& v6 = reinterpret_cast<sockaddr_in6&>(socket_address);
        v6.sin6_family = AF_INET6;
        v6.sin6_port = htons(port);
        if (inet_pton(AF_INET6, address.c_str(), &v6.sin6_addr) != 1) return 0;
        return sizeof(v6);
    }
    auto& v4 = reinterpret_cast<sockaddr_in&>(socket_address);
    v4.sin_family = AF_INET;
    v4.sin_port = htons(port);
    if (inet_pton(AF_INET, address.c_str(), &v4.sin_addr) != 1) return 0;
    return sizeof(v4);
}

}  // namespace ct_peer
