// Traffic shaping against hostile replies and any order of events: the
// input is a script of steps (one byte each picks the step; a reply step
// takes the text up to the next newline, parsed as the client parses a
// server's reply). Every reply is classified; the shaper (shipped rules,
// limits on) is asked for connections and messages, told of replies and
// ends, and advanced in time. Invariants: no crash; a failure always has a
// category and a success none; open connections never go negative or past
// the limit; a "not before" is in the future; the factor stays within
// [minimum, 1]; a suspended destination never admits; the effective limits
// are at least 1. A warm-up plan (issue 19) rides along: a source sends
// only while it has room, never more than the day's cap; its next window
// is in the future; its day stays within the plan.

import TernShapingPure
import TernProtocol

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzShaping(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    var config = ShapingConfig()
    config.defaults = ShapingLimits(connections: 3, messagesPerConnection: 5, messagesPerSecond: 4, messagesPerMinute: 50, burst: 3,
                                    connectionsPerMinute: 10)
    config.rampIntervalMillis = 1_000
    var shaper = Shaper(config: config)
    let classifier = BounceClassifier()
    var now: Int64 = 1_800_000_000_000
    var open: [ShapingKey: Int] = [:]
    var plan = WarmupPlan(name: "f", daily: [3, 6, 12], hours: 2)
    plan.minSample = 2
    var warmup = Warmup(plans: [plan])
    warmup.set("s", WarmupProgress(plan: "f", dayStartedAt: now))
    var i = 0
    while i < bytes.count {
        let op = bytes[i]
        i += 1
        let key = ShapingKey(destination: op & 0x80 == 0 ? "a" : "b")
        switch op & 0x07 {
        case 0:
            let (answer, _) = shaper.admitConnection(key, now: now)
            if answer == .go { open[key, default: 0] += 1 }
            if case .notBefore(let t) = answer { precondition(t > now, "not before the past") }
            if shaper.state(key).mode(at: now) == .suspended || shaper.state(key).mode(at: now) == .paused { precondition(answer != .go) }
        case 1:
            let (answer, _) = shaper.admitMessage(key, now: now)
            if case .notBefore(let t) = answer { precondition(t > now, "not before the past") }
            if let room = warmup.remaining("s", key.destination, now: now) {
                if room > 0 { warmup.take("s", key.destination, now: now) } else {
                    precondition(warmup.nextWindow("s", key.destination, now: now) > now, "a warm-up window in the past")
                }
            }
        case 2:
            if open[key, default: 0] > 0 { open[key]! -= 1; shaper.connectionEnded(key) }
        case 3, 4:
            // A reply: the text up to the next newline.
            let end = bytes[i...].firstIndex(of: 10) ?? bytes.count
            var parser = ReplyParser()
            let text = String(decoding: bytes[i..<end], as: UTF8.self)
            i = min(bytes.count, end + 1)
            guard let reply = try? parser.feed(text) else { continue }
            let category = classifier.classify(reply)
            precondition((category == nil) == (reply.code < 300), "a failure without a category, or a success with one")
            _ = shaper.observe(key, reply: reply, category: category, now: now)
            warmup.observe("s", key.destination, category == .reputation ? .blocked(permanent: reply.code >= 500)
                           : reply.code < 300 ? .delivered : reply.code < 500 ? .deferred : .bounced)
        case 5:
            now += Int64(i < bytes.count ? bytes[i] : 1) * 97
            i += 1
            _ = shaper.advance(now: now)
        case 6:
            now += 3_600_000
            for c in warmup.advance(now: now) { precondition(c.progress.day >= 1 && c.progress.day <= plan.daily.count + 1, "day out of the plan") }
        default:
            if op & 0x40 != 0 { shaper.setOperator(key, paused: op & 0x20 != 0, limits: ShapingLimits(connections: Int(op & 0x03) + 1)) } else { shaper.reset(key) }
        }
        for (k, n) in open { precondition(shaper.openConnections(k) == n && n >= 0, "open connections miscounted") }
        if let p = warmup.progress["s"], let cap = plan.cap(day: p.day) {
            for (_, c) in warmup.counts["s"] ?? [:] { precondition(c.sent <= cap && c.hourSent <= plan.hourlyCap(day: p.day)!, "over the warm-up cap") }
        }
        let st = shaper.state(key)
        precondition(st.factor >= config.minimumFactor - 1e-9 && st.factor <= 1 + 1e-9, "factor out of range")
        let e = shaper.effective(key, now: now)
        precondition((e.connections ?? 1) >= 1 && (e.messagesPerSecond ?? 1) >= 1 && (e.burst ?? 1) >= 1, "a limit below one")
    }
    return 0
}
