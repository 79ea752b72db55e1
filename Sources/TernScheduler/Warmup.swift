// Automatic IP warm-up (issue 19), as pure decisions: every call takes
// `now`. A warming source may send each destination (a provider, or a
// domain) at most its plan day's cap, spread over the day (at most
// cap / hours per hour). At each day's end the day's results decide: a
// destination with too many block replies (bounce category "reputation") or
// hard bounces steps the plan back a day; too many deferrals hold it on the
// same day; otherwise it advances. After the last day the source is warm
// (no caps). The ShapingGate asks it before each connection and message of
// a source; mail over a cap is never bounced: it goes from the pool's other
// sources, or waits for the next hour or day.

import Foundation

public struct WarmupPlan: Sendable, Equatable {
    public var name: String
    /// Messages per destination per day; day 1 first.
    public var daily: [Int]
    /// The day's cap is spread over this many hours (1...24).
    public var hours = 24
    /// A day's results per destination, over at least `minSample` answered transactions:
    /// block replies above this share step the plan back a day…
    public var maxBlockRate = 0.02
    /// …as do hard bounces above this share…
    public var maxBounceRate = 0.05
    /// …and deferrals above this share hold it on the same day.
    public var maxDeferralRate = 0.10
    public var minSample = 20

    public init(name: String, daily: [Int], hours: Int = 24) {
        self.name = name
        self.daily = daily
        self.hours = hours
    }

    /// The built-in plan (docs/warmup.md): 30 days from 50 to 100,000 per
    /// destination per day. The first 18 days grow about 40 % a day, the
    /// ratio of SendGrid's published automated warm-up schedule; then the
    /// growth slows to reach 100,000 on day 30.
    public static let builtIn = WarmupPlan(name: "default", daily: [
        50, 70, 100, 140, 200, 280, 400, 560, 800, 1_100,
        1_500, 2_100, 3_000, 4_200, 6_000, 8_000, 11_000, 15_000, 20_000, 25_000,
        30_000, 37_000, 45_000, 53_000, 62_000, 70_000, 78_000, 86_000, 93_000, 100_000,
    ])

    /// The day's cap per destination (nil: past the plan, warm).
    public func cap(day: Int) -> Int? { day >= 1 && day <= daily.count ? daily[day - 1] : nil }
    /// The hour's cap per destination.
    public func hourlyCap(day: Int) -> Int? { cap(day: day).map { ($0 + hours - 1) / max(1, hours) } }
}

public enum WarmupStatus: String, Sendable, Equatable {
    case active, paused, done
}

/// A warming source's place in its plan.
public struct WarmupProgress: Sendable, Equatable {
    public var plan: String
    public var day = 1
    public var dayStartedAt: Int64
    public var status = WarmupStatus.active
    /// How the last day ended, and why.
    public var verdict: WarmupVerdict?
    public var reason: String?
    /// The operator change this state includes (`tern warmup`).
    public var operatorVersion: Int64 = 0

    public init(plan: String, day: Int = 1, dayStartedAt: Int64, status: WarmupStatus = .active, verdict: WarmupVerdict? = nil,
                reason: String? = nil, operatorVersion: Int64 = 0) {
        self.plan = plan
        self.day = day
        self.dayStartedAt = dayStartedAt
        self.status = status
        self.verdict = verdict
        self.reason = reason
        self.operatorVersion = operatorVersion
    }
}

public enum WarmupVerdict: String, Sendable, Equatable {
    case advanced, held
    case steppedBack = "stepped_back"
}

/// One source and destination's counts of the current day and hour.
public struct WarmupCounts: Sendable, Equatable {
    public var sent = 0
    public var delivered = 0
    public var deferred = 0
    public var bounced = 0
    public var blocked = 0
    public var hourStartedAt: Int64 = 0
    public var hourSent = 0

    public init() {}

    /// Transactions with an answer.
    public var answered: Int { delivered + deferred + bounced }
}

/// What a transaction's answer was, for the day's health.
public enum WarmupResult: Sendable {
    case delivered, deferred, bounced
    /// A refusal (4xx or 5xx) in the category "reputation or blocklist".
    case blocked(permanent: Bool)
}

/// A day ended (or an operator acted): for events and logs.
public struct WarmupChange: Sendable, Equatable {
    public var source: String
    public var progress: WarmupProgress
    /// The finished day's counts per destination.
    public var counts: [String: WarmupCounts]
    public var finishedDay: Int
}

public struct Warmup: Sendable {
    public static let dayMillis: Int64 = 86_400_000
    public static let hourMillis: Int64 = 3_600_000

    public var plans: [String: WarmupPlan]
    public private(set) var progress: [String: WarmupProgress] = [:]
    /// By source, then destination.
    public private(set) var counts: [String: [String: WarmupCounts]] = [:]

    public init(plans: [WarmupPlan]) {
        var all = [WarmupPlan.builtIn.name: WarmupPlan.builtIn]
        for p in plans { all[p.name] = p }
        self.plans = all
    }

    public func isWarming(_ source: String) -> Bool {
        guard let p = progress[source] else { return false }
        return p.status != .done && plans[p.plan] != nil
    }

    /// Sets a source's place (at start, from the store; or an operator's change).
    public mutating func set(_ source: String, _ p: WarmupProgress, counts c: [String: WarmupCounts]? = nil) {
        let dayChanged = progress[source].map { $0.day != p.day || $0.dayStartedAt != p.dayStartedAt } ?? true
        progress[source] = p
        if let c { counts[source] = c } else if dayChanged { counts[source] = [:] }
    }

    /// What the source may still send the destination this hour (nil: no cap).
    public func remaining(_ source: String, _ destination: String, now: Int64) -> Int? {
        guard isWarming(source), let p = progress[source], let plan = plans[p.plan], let day = plan.cap(day: p.day),
              let hour = plan.hourlyCap(day: p.day) else { return nil }
        let c = counts[source]?[destination] ?? WarmupCounts()
        let hourSent = now >= c.hourStartedAt + Warmup.hourMillis ? 0 : c.hourSent
        return max(0, min(day - c.sent, hour - hourSent))
    }

    /// When the source may send the destination again after its cap: the
    /// next hour, or the next day when the day's cap is spent.
    public func nextWindow(_ source: String, _ destination: String, now: Int64) -> Int64 {
        guard let p = progress[source], let plan = plans[p.plan] else { return now }
        let dayEnds = p.dayStartedAt + Warmup.dayMillis
        let c = counts[source]?[destination] ?? WarmupCounts()
        if let cap = plan.cap(day: p.day), c.sent >= cap { return max(now + 1, dayEnds) }
        let hourStart = p.dayStartedAt + max(0, (now - p.dayStartedAt) / Warmup.hourMillis) * Warmup.hourMillis
        return min(dayEnds, hourStart + Warmup.hourMillis)
    }

    /// A message goes from the source to the destination.
    public mutating func take(_ source: String, _ destination: String, now: Int64) {
        guard isWarming(source), let p = progress[source] else { return }
        var c = counts[source]?[destination] ?? WarmupCounts()
        if now >= c.hourStartedAt + Warmup.hourMillis {
            c.hourStartedAt = p.dayStartedAt + max(0, (now - p.dayStartedAt) / Warmup.hourMillis) * Warmup.hourMillis
            c.hourSent = 0
        }
        c.sent += 1
        c.hourSent += 1
        counts[source, default: [:]][destination] = c
    }

    /// A transaction from the source was answered.
    public mutating func observe(_ source: String, _ destination: String, _ result: WarmupResult) {
        guard isWarming(source) else { return }
        var c = counts[source]?[destination] ?? WarmupCounts()
        switch result {
        case .delivered: c.delivered += 1
        case .deferred: c.deferred += 1
        case .bounced: c.bounced += 1
        case .blocked(let permanent):
            c.blocked += 1
            if permanent { c.bounced += 1 } else { c.deferred += 1 }
        }
        counts[source, default: [:]][destination] = c
    }

    /// Ends the days that are over: each judged by its results.
    public mutating func advance(now: Int64) -> [WarmupChange] {
        var changes: [WarmupChange] = []
        for source in progress.keys.sorted() {
            while var p = progress[source], p.status != .done, now >= p.dayStartedAt + Warmup.dayMillis, let plan = plans[p.plan] {
                let finished = p.day
                let dayCounts = counts[source] ?? [:]
                if p.status == .paused {
                    p.verdict = .held
                    p.reason = "paused by an operator"
                } else {
                    (p.verdict, p.reason) = Warmup.judge(dayCounts, plan: plan, day: p.day)
                    switch p.verdict {
                    case .advanced?: p.day += 1
                    case .steppedBack?: p.day = max(1, p.day - 1)
                    case .held?, nil: break
                    }
                    if p.day > plan.daily.count { p.status = .done }
                }
                p.dayStartedAt += Warmup.dayMillis
                progress[source] = p
                counts[source] = [:]
                changes.append(WarmupChange(source: source, progress: p, counts: dayCounts, finishedDay: finished))
            }
        }
        return changes
    }

    /// A day's verdict from its counts per destination.
    static func judge(_ counts: [String: WarmupCounts], plan: WarmupPlan, day: Int) -> (WarmupVerdict, String) {
        guard counts.values.contains(where: { $0.sent > 0 }) else { return (.held, "no mail was sent on day \(day)") }
        var hold: String? = nil
        for (destination, c) in counts.sorted(by: { $0.key < $1.key }) where c.answered >= plan.minSample {
            let n = Double(c.answered)
            if Double(c.blocked) / n > plan.maxBlockRate {
                return (.steppedBack, "\(destination): \(c.blocked) of \(c.answered) refused for reputation or a blocklist")
            }
            if Double(c.bounced) / n > plan.maxBounceRate {
                return (.steppedBack, "\(destination): \(c.bounced) of \(c.answered) hard bounces")
            }
            if hold == nil, Double(c.deferred) / n > plan.maxDeferralRate {
                hold = "\(destination): \(c.deferred) of \(c.answered) deferred"
            }
        }
        if let hold { return (.held, hold) }
        return (.advanced, "healthy")
    }
}
