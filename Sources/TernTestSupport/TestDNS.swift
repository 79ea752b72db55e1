// dnsmasq on a loopback port serving TXT and A records for tests (DKIM keys, blocklists):
// never the system resolver. dnsmasq needs `--local=/test/` or names it does
// not know come back REFUSED.

import Foundation
#if canImport(Glibc)
import Glibc
#endif

public enum TestDNSError: Error { case notInstalled }

/// A dnsmasq on a loopback port serving TXT records (never the system resolver).
public final class TestDNS {
    public let port = freeLoopbackUDPPort()
    let process = Process()

    /// `a`: names answered with an IPv4 address (and every name under them);
    /// `forward`: zones sent on to another server ("zone", "127.0.0.1#port").
    public init(txt: [(name: String, value: String)], a: [(name: String, address: String)] = [],
                forward: [(zone: String, server: String)] = []) throws {
        let dnsmasq = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"].first { FileManager.default.isExecutableFile(atPath: $0) }
        guard let dnsmasq else { throw TestDNSError.notInstalled }
        process.executableURL = URL(fileURLWithPath: dnsmasq)
        var args = ["--no-daemon", "--port=\(port)", "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv",
                    "--no-hosts", "--local=/test/", "--pid-file=", "--user=root"]
        for (name, value) in txt {
            // A TXT string holds at most 255 octets: a long record is several.
            args.append("--txt-record=\(name)," + value.chunkedForTXT.joined(separator: ","))
        }
        for (name, address) in a { args.append("--address=/\(name)/\(address)") }
        for (zone, server) in forward { args.append("--server=/\(zone)/\(server)") }
        process.arguments = args
        process.standardError = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        // Ready once dnsmasq holds its port (a query before would find nobody).
        for _ in 0..<500 where !udpPortTaken(port) { usleep(10_000) }
    }

    deinit {
        kill(process.processIdentifier, SIGKILL)
        var status: Int32 = 0
        waitpid(process.processIdentifier, &status, 0)
    }
}

extension String {
    public var chunkedForTXT: [String] {
        var out: [String] = []
        var rest = Substring(self)
        while !rest.isEmpty { out.append(String(rest.prefix(250))); rest = rest.dropFirst(250) }
        return out
    }
}


/// Whether a UDP port on 127.0.0.1 is bound by someone.
func udpPortTaken(_ port: Int) -> Bool {
    let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    addr.sin_port = in_port_t(UInt16(port).bigEndian)
    let rc = withUnsafeMutablePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    return rc != 0
}
