// tern-sink: a counting SMTP sink for benchmarks (loopback, ephemeral port).
// Prints "PORT n" when listening; with --expect N prints
// "DONE count=N first_to_last_s=…" and exits once N messages arrived
// (or after --timeout seconds, with "TIMEOUT count=…").
//
// usage: tern-sink [--expect N] [--timeout SECONDS]

import Foundation
import NIOPosix
import TernTestSupport

var expect = 0
var timeout = 600.0
var args = CommandLine.arguments.dropFirst()
while let a = args.popFirst() {
    switch a {
    case "--expect": expect = Int(args.popFirst()!)!
    case "--timeout": timeout = Double(args.popFirst()!)!
    default: fatalError("unknown option \(a)")
    }
}
let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
var config = SinkServer.Config()
config.record = false
let sink = try await SinkServer.start(config, group: group)
print("PORT \(sink.port)")
fflush(stdout)
let start = Date()
var first: Date? = nil
while true {
    let n = sink.count
    if n > 0 && first == nil { first = Date() }
    if expect > 0 && n >= expect {
        print(String(format: "DONE count=%d first_to_last_s=%.3f", n, Date().timeIntervalSince(first ?? start)))
        break
    }
    if Date().timeIntervalSince(start) > timeout {
        print("TIMEOUT count=\(n)")
        break
    }
    try await Task.sleep(for: .milliseconds(5))
}
fflush(stdout)
await sink.stop()
exit(0)
