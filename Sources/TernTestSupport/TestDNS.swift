// dnsmasq on a loopback port serving TXT records for tests (DKIM keys):
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

    public init(txt: [(name: String, value: String)]) throws {
        let dnsmasq = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"].first { FileManager.default.isExecutableFile(atPath: $0) }
        guard let dnsmasq else { throw TestDNSError.notInstalled }
        process.executableURL = URL(fileURLWithPath: dnsmasq)
        var args = ["--no-daemon", "--port=\(port)", "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv",
                    "--no-hosts", "--local=/test/", "--pid-file=", "--user=root"]
        for (name, value) in txt {
            // A TXT string holds at most 255 octets: a long record is several.
            args.append("--txt-record=\(name)," + value.chunkedForTXT.joined(separator: ","))
        }
        process.arguments = args
        process.standardError = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        try process.run()
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

