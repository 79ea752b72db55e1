// The throttling rules Tern ships (docs/shaping.md lists them with their
// sources). Provider-specific ones first: the first rule that matches a
// reply counts it. Users' `[[throttle_rule]]` tables come before all of these.

import TernProtocol

public enum ShippedThrottleRules {
    private static func rule(_ name: String, _ destination: String? = nil, code: ReplyMatcher.Code? = nil, enhanced: String? = nil,
                             pattern: String? = nil, category: BounceCategory? = nil, threshold: Int = 1, windowMinutes: Int64 = 0,
                             _ action: ThrottleAction, minutes: Int64) -> ThrottleRule {
        ThrottleRule(name: name, destination: destination, matcher: try! ReplyMatcher(code: code, enhanced: enhanced, pattern: pattern),
                     category: category, threshold: threshold, windowMillis: windowMinutes * 60_000, action: action,
                     durationMillis: minutes * 60_000)
    }

    public static let all: [ThrottleRule] = [
        // Gmail: "421-4.7.28 ... unusual rate of unsolicited mail ... temporarily rate limited".
        rule("google-rate-limited", enhanced: "4.7.28", .throttle(factor: 0.5), minutes: 15),
        rule("google-unusual-rate", code: .klass(4), pattern: "unusual rate of unsolicited mail", .throttle(factor: 0.5), minutes: 30),
        // Gmail: "450 4.2.1 The user you are trying to contact is receiving mail too quickly".
        rule("google-receiving-too-quickly", code: .klass(4), pattern: "receiving mail (too quickly|at a rate)",
             threshold: 3, windowMinutes: 10, .throttle(factor: 0.75), minutes: 10),
        // Microsoft: "451 4.7.650 The mail server [IP] has been temporarily rate limited due to IP reputation".
        rule("microsoft-rate-limited", enhanced: "4.7.650", .throttle(factor: 0.5), minutes: 30),
        // Microsoft: "421 4.7.500 Server busy. Please try again later" (S77719 and the like).
        rule("microsoft-server-busy", code: .klass(4), enhanced: "4.7.500", threshold: 3, windowMinutes: 10, .throttle(factor: 0.5), minutes: 15),
        // Yahoo: "421 4.7.0 [TSS04] Messages from a.b.c.d temporarily deferred due to unexpected volume or user complaints".
        rule("yahoo-tss04", code: .klass(4), pattern: #"\[?TSS04\]?|temporarily deferred due to unexpected volume"#,
             .throttle(factor: 0.5), minutes: 30),
        // Yahoo: "553 5.7.2 [TSS09] All messages from a.b.c.d will be permanently deferred": stop for an hour.
        rule("yahoo-tss09", pattern: #"\[?TSS09\]?|will be permanently deferred"#, .suspend, minutes: 60),
        // Apple: "450 4.7.0 ... rate limited" / "421 4.7.0 ... too many connections".
        rule("too-many-connections", code: .klass(4), pattern: "too many (concurrent )?(connections|sessions)",
             .limit(ShapingLimits(connections: 2)), minutes: 10),
        // The well-known generic ones: "421 4.7.0 Try again later", and any
        // 4xx the classifier calls a rate limit or a reputation block.
        rule("try-again-later", code: .exact(421), enhanced: "4.7.0", pattern: "try again later",
             threshold: 5, windowMinutes: 10, .throttle(factor: 0.5), minutes: 10),
        rule("rate-limit-4xx", code: .klass(4), category: .rateLimit, threshold: 3, windowMinutes: 5, .throttle(factor: 0.5), minutes: 10),
        rule("reputation-4xx", code: .klass(4), category: .reputation, threshold: 3, windowMinutes: 10, .throttle(factor: 0.5), minutes: 30),
    ]
}
