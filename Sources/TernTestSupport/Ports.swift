// Free loopback ports for test servers that cannot bind port 0 themselves
// (dnsmasq): bind to port 0, read the port, release it.

#if canImport(Glibc)
import Glibc
#endif

public func freeLoopbackUDPPort() -> Int { freeLoopbackPort(Int32(SOCK_DGRAM.rawValue)) }

/// A TCP port free on 127.0.0.1 now (for a server that must know its own
/// port before it binds, such as one routed to itself).
public func freeLoopbackTCPPort() -> Int { freeLoopbackPort(Int32(SOCK_STREAM.rawValue)) }

private func freeLoopbackPort(_ type: Int32) -> Int {
    let fd = socket(AF_INET, type, 0)
    defer { close(fd) }
    return bindLoopback(fd)
}

/// Binds `fd` to 127.0.0.1 on a port the kernel picks; returns the port.
private func bindLoopback(_ fd: Int32) -> Int {
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
    _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
    return Int(UInt16(bigEndian: addr.sin_port))
}

/// A UDP socket on 127.0.0.1 that never answers: a DNS server that times out.
public final class SilentUDPServer: @unchecked Sendable {
    public let port: Int
    let fd: Int32

    public init() {
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        self.fd = fd
        self.port = bindLoopback(fd)
    }

    deinit { close(fd) }
}
