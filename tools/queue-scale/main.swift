// tern-queue-scale: does the cost of intake and of a claim grow with the
// history in the database? Runs the same work against a database given on
// the command line (copy a big one made by tools/gen-history) and prints:
//   intake  — messages/s with 20 concurrent inserters through group commit, and the insert latency p50/p99
//   claim   — latency p50/p99 of claiming 20 due recipients of one domain (UPDATE … RETURNING)
//   due     — latency p50/p99 of the scheduler's due-lane walk, with and without the counts
//
// usage: tern-queue-scale DB [--messages 5000]
// The database is modified (messages are added and claimed): use a copy.

import Foundation
import TernStore

let args = CommandLine.arguments
guard args.count >= 2 else { print("usage: tern-queue-scale DB [--messages N]"); exit(64) }
let path = args[1]
let messages: Int = {
    if let i = args.firstIndex(of: "--messages"), i + 1 < args.count, let n = Int(args[i + 1]) { return n }
    return 5000
}()

func percentile(_ xs: [Double], _ p: Double) -> Double {
    let s = xs.sorted()
    return s.isEmpty ? 0 : s[min(s.count - 1, Int(Double(s.count - 1) * p))]
}
func now() -> Double { Date().timeIntervalSince1970 }

let store = try Store(path: path)
let live = try store.summary()
let total = try store.stateCounts().values.reduce(0, +)
print("database: \(path): \(total) recipients before the run (queued \(live.count(.queued)), deferred \(live.count(.deferred)))")

// Intake: 20 inserters, like 20 SMTP sessions.
let body = Data(("Subject: scale\r\n\r\n" + String(repeating: "x", count: 4000) + "\r\n").utf8)
let start = now()
let latencies = await withTaskGroup(of: [Double].self) { group in
    for w in 0..<20 {
        group.addTask {
            var mine: [Double] = []
            var i = w
            while i < messages {
                let t = now()
                _ = try? await store.insertMessage(NewMessage(
                    queueID: "S\(UUID().uuidString)", receivedAt: nowMillis(), mailFrom: "load@scale.test", body: body,
                    clientAddress: "127.0.0.1", helo: "scale", headerMessageID: nil, envID: nil, ret: nil, bodyType: nil,
                    smtputf8: false, origin: "smtp", recipients: [NewRecipient(address: "r\(i)@scale-bench.test", domain: "scale-bench.test")]))
                mine.append((now() - t) * 1000)
                i += 20
            }
            return mine
        }
    }
    var all: [Double] = []
    for await part in group { all += part }
    return all
}
let elapsed = now() - start
print(String(format: "intake: %d messages in %.2f s = %.0f msg/s; insert latency p50 %.2f ms, p99 %.2f ms",
             messages, elapsed, Double(messages) / elapsed, percentile(latencies, 0.5), percentile(latencies, 0.99)))

// The scheduler's due-domain query, then claims of 20 until the domain is drained.
var due: [Double] = []
var lanes: [Double] = []
for _ in 0..<50 {
    var t = now()
    _ = try store.dueDomains(now: nowMillis(), countCap: 100) // the counts a pass makes with every lane free to start workers (20 × 5)
    due.append((now() - t) * 1000)
    t = now()
    _ = try store.dueLanes() // a pass with every connection in use: no counts
    lanes.append((now() - t) * 1000)
}
var claims: [Double] = []
var claimed = 0
while true {
    let t = now()
    let batch = try await store.claim(domain: "scale-bench.test", now: nowMillis(), owner: "scale", leaseUntil: nowMillis() + 600_000, limit: 20)
    claims.append((now() - t) * 1000)
    if batch.isEmpty { break }
    claimed += batch.count
}
print(String(format: "claim: %d claims of up to 20 (%d recipients); latency p50 %.2f ms, p99 %.2f ms", claims.count, claimed,
             percentile(claims, 0.5), percentile(claims, 0.99)))
print(String(format: "due lanes with counts (up to 100): latency p50 %.2f ms, p99 %.2f ms", percentile(due, 0.5), percentile(due, 0.99)))
print(String(format: "due lanes alone: latency p50 %.2f ms, p99 %.2f ms", percentile(lanes, 0.5), percentile(lanes, 0.99)))
store.close()
