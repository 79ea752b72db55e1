// tern-sink: a counting SMTP sink for benchmarks (loopback only).
// Prints "PORT n" for each listener; with --expect N prints
// "DONE count=N first_to_last_s=…" and exits once N messages arrived
// (or after --timeout seconds, with "TIMEOUT count=…"). With --progress it
// prints "COUNT n" whenever the count changed (at most every 50 ms).
//
// A slow remote (issue 21's `internet` scenario): --greeting-delay MS waits
// before the greeting, --dot-delay MS before answering the final dot; the
// replies keep the order of the commands (RFC 2920), which smtp-sink's
// `-W .:N` does not.
//
// usage: tern-sink [--listen 127.0.0.x:PORT]... [--expect N] [--timeout SECONDS]
//                  [--greeting-delay MS] [--dot-delay MS] [--threads N] [--progress]

import Foundation
import NIOPosix
import TernTestSupport

var expect = 0
var timeout = 600.0
var listens: [(String, Int)] = []
var threads = 1
var progress = false
var config = SinkServer.Config()
config.record = false
let usage = """
usage: tern-sink [--listen 127.0.0.x:PORT]... [--expect N] [--timeout SECONDS]
                 [--greeting-delay MS] [--dot-delay MS] [--threads N] [--progress]
"""

/// Prints why and the usage to standard error, and exits 2.
func usageError(_ why: String) -> Never {
    FileHandle.standardError.write(Data("tern-sink: \(why)\n\(usage)\n".utf8))
    exit(2)
}

var args = CommandLine.arguments.dropFirst()
/// The option's value as a number (at least `min`), or a usage error.
func number<T: LosslessStringConvertible & Comparable>(_ option: String, min: T) -> T {
    guard let v = args.popFirst() else { usageError("\(option) needs a value") }
    guard let n = T(v), n >= min else { usageError("\(option) wants a number of at least \(min), not \(v)") }
    return n
}
while let a = args.popFirst() {
    switch a {
    case "-h", "--help":
        print(usage)
        exit(0)
    case "--expect": expect = number(a, min: 0)
    case "--timeout": timeout = number(a, min: 0.0)
    case "--greeting-delay": config.greetingDelayMillis = number(a, min: Int64(0))
    case "--dot-delay": config.dotDelayMillis = number(a, min: Int64(0))
    case "--threads": threads = number(a, min: 1)
    case "--progress": progress = true
    case "--listen":
        guard let v = args.popFirst() else { usageError("--listen needs HOST:PORT") }
        guard let colon = v.lastIndex(of: ":"), let port = Int(v[v.index(after: colon)...]), (0...65535).contains(port) else {
            usageError("--listen wants HOST:PORT, not \(v)")
        }
        let host = String(v[..<colon])
        guard host.hasPrefix("127.") || host == "::1" else { usageError("tern-sink listens on loopback only, not \(host)") }
        listens.append((host, port))
    default: usageError("unknown option \(a)")
    }
}
if listens.isEmpty { listens = [("127.0.0.1", 0)] }
let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
var sinks: [SinkServer] = []
for (host, port) in listens {
    let sink = try await SinkServer.start(config, group: group, host: host, port: port)
    print("PORT \(sink.port)")
    sinks.append(sink)
}
fflush(stdout)
let start = Date()
var first: Date? = nil
var shown = -1
while true {
    let n = sinks.reduce(0) { $0 + $1.count }
    if n > 0 && first == nil { first = Date() }
    if progress && n != shown {
        print("COUNT \(n)")
        fflush(stdout)
        shown = n
    }
    if expect > 0 && n >= expect {
        print(String(format: "DONE count=%d first_to_last_s=%.3f", n, Date().timeIntervalSince(first ?? start)))
        break
    }
    if Date().timeIntervalSince(start) > timeout {
        print("TIMEOUT count=\(n)")
        break
    }
    try await Task.sleep(for: .milliseconds(progress ? 50 : 5))
}
fflush(stdout)
for sink in sinks { await sink.stop() }
exit(0)
