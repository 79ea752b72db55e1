// tern-loadgen: an SMTP load generator for measuring acceptance.
// N sessions (one thread each, blocking sockets, connections reused) send
// M messages in total; for each message it times the end of DATA (the final
// dot sent) to the 250 reply. Prints throughput and latency percentiles.
//
// With --rcpt-file FILE, message k (counted over all sessions) goes to the
// file's line k (modulo its length), one recipient each: the `internet`
// benchmark's many destinations, which smtp-source (one -t address) cannot
// address.
//
// usage: tern-loadgen --port P [--host 127.0.0.1] [--sessions 20]
//                          [--messages 10000] [--size 4096] [--rcpts 1]
//                          [--rcpt-file FILE]

import Foundation
#if canImport(Glibc)
import Glibc
#endif

struct Options {
    var host = "127.0.0.1"
    var port = 2525
    var sessions = 20
    var messages = 10_000
    var size = 4096
    var rcpts = 1
    var rcptFile: String? = nil
}

let usage = """
usage: tern-loadgen --port P [--host 127.0.0.1] [--sessions 20]
                    [--messages 10000] [--size 4096] [--rcpts 1] [--rcpt-file FILE]
N sessions (connections reused) send M messages in total; prints throughput
and the end of DATA to 250 latency (p50, p99).
"""

/// Prints why and the usage to standard error, and exits 2.
func usageError(_ why: String) -> Never {
    FileHandle.standardError.write(Data("tern-loadgen: \(why)\n\(usage)\n".utf8))
    exit(2)
}

func parse() -> Options {
    var o = Options()
    var args = CommandLine.arguments.dropFirst()
    func number(_ option: String, _ value: String, min: Int) -> Int {
        guard let n = Int(value), n >= min else { usageError("\(option) wants a whole number of at least \(min), not \(value)") }
        return n
    }
    while let a = args.popFirst() {
        if a == "--help" || a == "-h" {
            print(usage)
            exit(0)
        }
        guard let v = args.popFirst() else { usageError("\(a) needs a value") }
        switch a {
        case "--host": o.host = v
        case "--port": o.port = number(a, v, min: 1)
        case "--sessions": o.sessions = number(a, v, min: 1)
        case "--messages": o.messages = number(a, v, min: 1)
        case "--size": o.size = number(a, v, min: 0)
        case "--rcpts": o.rcpts = number(a, v, min: 1)
        case "--rcpt-file": o.rcptFile = v
        default: usageError("unknown option \(a)")
        }
    }
    return o
}

func monotonicNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

final class Connection {
    let fd: Int32
    var buffer = [UInt8]()

    init(host: String, port: Int) {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr(host)
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        precondition(rc == 0, "connect failed: \(errno)")
    }

    func send(_ bytes: [UInt8]) {
        var off = 0
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            precondition(n > 0, "send failed")
            off += n
        }
    }

    /// Reads one (possibly multi-line) reply; returns its code.
    func reply() -> Int {
        while true {
            if let i = buffer.firstIndex(of: 10) {
                let line = buffer[..<i]
                buffer.removeFirst(i + 1)
                if line.count >= 4 && line[line.startIndex + 3] == UInt8(ascii: "-") { continue }
                return Int(String(decoding: line.prefix(3), as: UTF8.self)) ?? 0
            }
            var chunk = [UInt8](repeating: 0, count: 4096)
            let n = recv(fd, &chunk, chunk.count, 0)
            precondition(n > 0, "connection closed")
            buffer += chunk[0..<n]
        }
    }
}

let o = parse()
let line = Array(repeating: UInt8(ascii: "x"), count: 76) + [13, 10]
var body = Array("Subject: bench\r\nFrom: bench@load.test\r\n\r\n".utf8)
while body.count + line.count <= o.size { body += line }
if o.size - body.count >= 3 { body += Array(repeating: UInt8(ascii: "y"), count: o.size - body.count - 2) + [13, 10] }
let finalDot = Array(".\r\n".utf8)
let envelope = Array(("MAIL FROM:<bench@load.test>\r\n" + (0..<o.rcpts).map { "RCPT TO:<r\($0)@sink.test>\r\n" }.joined() + "DATA\r\n").utf8)
let listed: [[UInt8]] = o.rcptFile.map { path in
    let text = try! String(contentsOfFile: path, encoding: .utf8)
    return text.split(separator: "\n").map { Array("MAIL FROM:<bench@load.test>\r\nRCPT TO:<\($0)>\r\nDATA\r\n".utf8) }
} ?? []
precondition(o.rcptFile == nil || (!listed.isEmpty && o.rcpts == 1), "--rcpt-file needs recipients and --rcpts 1")

let perSession = (0..<o.sessions).map { i in o.messages / o.sessions + (i < o.messages % o.sessions ? 1 : 0) }
let lock = NSLock()
var latencies: [UInt64] = []
latencies.reserveCapacity(o.messages)
var failures = 0
let group = DispatchGroup()
let start = monotonicNanos()
for s in 0..<o.sessions {
    group.enter()
    let t = Thread {
        let c = Connection(host: o.host, port: o.port)
        _ = c.reply()
        c.send(Array("EHLO load.test\r\n".utf8))
        _ = c.reply()
        var mine: [UInt64] = []
        var failed = 0
        for k in 0..<perSession[s] {
            // RFC 2920 group: MAIL, RCPT…, DATA
            c.send(listed.isEmpty ? envelope : listed[(k * o.sessions + s) % listed.count])
            var ok = c.reply() == 250
            for _ in 0..<o.rcpts { ok = c.reply() == 250 && ok }
            guard c.reply() == 354, ok else { failed += 1; continue }
            c.send(body)
            let t0 = monotonicNanos()
            c.send(finalDot)
            let code = c.reply()
            mine.append(monotonicNanos() - t0)
            if code != 250 { failed += 1 }
        }
        c.send(Array("QUIT\r\n".utf8))
        _ = c.reply()
        close(c.fd)
        lock.lock(); latencies += mine; failures += failed; lock.unlock()
        group.leave()
    }
    t.stackSize = 1 << 20
    t.start()
}
group.wait()
let elapsed = Double(monotonicNanos() - start) / 1e9
latencies.sort()
func pct(_ p: Double) -> Double {
    latencies.isEmpty ? 0 : Double(latencies[min(latencies.count - 1, Int(Double(latencies.count) * p))]) / 1e6
}
let rate = Double(latencies.count - failures) / elapsed
print(String(format: "sessions=%d messages=%d size=%d rcpts=%d failures=%d elapsed_s=%.2f msgs_per_s=%.0f p50_ms=%.2f p99_ms=%.2f",
             o.sessions, latencies.count, body.count, o.rcpts, failures, elapsed, rate, pct(0.50), pct(0.99)))
