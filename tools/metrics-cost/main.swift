// tern-metrics-cost: what counting costs per call, measured. With metrics
// off (no [http] listen) each hook is a relaxed atomic load and a branch;
// with them on, a swift-metrics handle from a locked table and a
// swift-prometheus update. Prints nanoseconds per call of the hooks a
// message passes on the hot path (received, recipient, the delivery timer,
// the queue time, the group commit), off and on.
//
// usage: tern-metrics-cost [--calls 20000000]

import Dispatch
import Metrics
import Prometheus
import TernMetrics

var calls = 20_000_000
var args = CommandLine.arguments.dropFirst()
while let a = args.popFirst() {
    guard a == "--calls", let v = args.popFirst().flatMap(Int.init) else { fatalError("usage: tern-metrics-cost [--calls N]") }
    calls = v
}

/// Nanoseconds per iteration of `body` over `n` iterations (the best of three runs).
func measure(_ n: Int, _ body: (Int) -> Void) -> Double {
    var best = Double.infinity
    for _ in 0..<3 {
        let start = DispatchTime.now().uptimeNanoseconds
        for i in 0..<n { body(i) }
        best = min(best, Double(DispatchTime.now().uptimeNanoseconds - start) / Double(n))
    }
    return best
}

func rounded(_ d: Double) -> String { String(Double(Int(d * 100)) / 100) }

func hooks(_ i: Int) {
    TernMetrics.received(origin: "smtp")
    TernMetrics.recipient("delivered", provider: "other", tally: .delivered)
    TernMetrics.deliveryDuration(milliseconds: Int64(i & 1023))
    TernMetrics.queueTime(milliseconds: Int64(i & 4095))
    TernMetrics.commit(batch: 1 + i & 63, nanoseconds: Int64(i & 0xFFFF))
}

let empty = measure(calls) { i in if i == -1 { print("never") } }
let off = measure(calls) { hooks($0) }
print("metrics off: \(rounded(off)) ns for the 5 hooks of one delivered message (an empty loop: \(rounded(empty)) ns); \(calls) iterations")
MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: PrometheusCollectorRegistry()))
TernMetrics.enable()
let on = measure(calls / 20) { hooks($0) }
print("metrics on:  \(rounded(on)) ns for the same 5 hooks; \(calls / 20) iterations")
