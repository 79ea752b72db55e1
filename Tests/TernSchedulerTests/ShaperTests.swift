import Testing
import TernProtocol
@testable import TernScheduler

/// Issue 18 items 2 and 3: the pacing decision, pure, on numbers for time.
@Suite struct ShaperTests {
    let t0: Int64 = 1_800_000_000_000
    let google = ShapingKey(destination: "google")

    func shaper(_ edit: (inout ShapingConfig) -> Void = { _ in }) -> Shaper {
        var c = ShapingConfig()
        c.rules = []
        edit(&c)
        return Shaper(config: c)
    }

    func reply(_ text: String) -> SMTPReply {
        guard let (e, rest) = EnhancedStatus.prefix(of: String(text.dropFirst(4))) else { return SMTPReply(Int(text.prefix(3))!, nil, String(text.dropFirst(4))) }
        let body = String(text.dropFirst(4))
        return SMTPReply(Int(text.prefix(3))!, e, String(body[rest...]))
    }

    @Test func aTokenBucketAllowsItsBurstThenPacesAtItsRate() {
        var s = shaper { $0.defaults.messagesPerMinute = 60; $0.defaults.burst = 5 }
        for _ in 0..<5 { #expect(s.admitMessage(google, now: t0).0 == .go) }
        // Empty: one token a second.
        #expect(s.admitMessage(google, now: t0).0 == .notBefore(t0 + 1_000))
        #expect(s.admitMessage(google, now: t0 + 999).0 == .notBefore(t0 + 1_000))
        #expect(s.admitMessage(google, now: t0 + 1_000).0 == .go)
        #expect(s.admitMessage(google, now: t0 + 1_000).0 == .notBefore(t0 + 2_000))
        // A long pause refills to the burst, not beyond.
        for _ in 0..<5 { #expect(s.admitMessage(google, now: t0 + 3_600_000).0 == .go) }
        #expect(s.admitMessage(google, now: t0 + 3_600_000).0 != .go)
    }

    @Test func everyBucketMustHaveATokenAndNoneIsTakenOtherwise() {
        var s = shaper { $0.defaults.messagesPerSecond = 10; $0.defaults.messagesPerHour = 3 }
        for _ in 0..<3 { #expect(s.admitMessage(google, now: t0).0 == .go) }
        // The hour bucket is empty: its refill (3 per hour → 1 per 20 minutes) decides.
        #expect(s.admitMessage(google, now: t0).0 == .notBefore(t0 + 1_200_000))
        // The second bucket kept its tokens (7 of 10) while the hour refused.
        #expect(s.tokens(google, now: t0).map { Int($0) } == [7, 0])
    }

    @Test func connectionsAreCountedUntilTheyEnd() {
        var s = shaper { $0.defaults.connections = 2 }
        #expect(s.admitConnection(google, now: t0).0 == .go)
        #expect(s.admitConnection(google, now: t0).0 == .go)
        #expect(s.admitConnection(google, now: t0).0 == .busy)
        s.connectionEnded(google)
        #expect(s.admitConnection(google, now: t0).0 == .go)
        // Another destination is not held by this one.
        #expect(s.admitConnection(ShapingKey(destination: "other.test"), now: t0).0 == .go)
    }

    @Test func connectionsPerMinuteIsABucketToo() {
        var s = shaper { $0.defaults.connectionsPerMinute = 2 }
        #expect(s.admitConnection(google, now: t0).0 == .go)
        s.connectionEnded(google)
        #expect(s.admitConnection(google, now: t0).0 == .go)
        s.connectionEnded(google)
        #expect(s.admitConnection(google, now: t0).0 == .notBefore(t0 + 30_000))
    }

    @Test func aDomainsLimitsOverItsProvidersOverTheDefaults() {
        let s = shaper {
            $0.defaults = ShapingLimits(connections: 20, messagesPerConnection: 100, messagesPerMinute: 1000)
            $0.destinations["google"] = ShapingLimits(connections: 10, messagesPerMinute: 600)
            $0.destinations["big.example"] = ShapingLimits(connections: 3)
        }
        #expect(s.effective(google, now: t0) == ShapingLimits(connections: 10, messagesPerConnection: 100, messagesPerMinute: 600))
        #expect(s.effective(ShapingKey(destination: "big.example"), now: t0)
            == ShapingLimits(connections: 3, messagesPerConnection: 100, messagesPerMinute: 1000))
        #expect(s.effective(ShapingKey(destination: "else.test"), now: t0).connections == 20)
    }

    @Test func operatorLimitsGoOverTheConfigurationAndPauseStopsEverything() {
        var s = shaper { $0.defaults.connections = 20 }
        s.setOperator(google, paused: false, limits: ShapingLimits(connections: 1))
        #expect(s.effective(google, now: t0).connections == 1)
        s.setOperator(google, paused: true, limits: ShapingLimits())
        #expect(s.state(google).mode(at: t0) == .paused)
        #expect(s.admitConnection(google, now: t0).0 == .notBefore(t0 + 1_000))
        #expect(s.admitMessage(google, now: t0).0 == .notBefore(t0 + 1_000))
        s.setOperator(google, paused: false, limits: ShapingLimits())
        #expect(s.admitConnection(google, now: t0).0 == .go)
    }

    @Test func aRuleCutsMultiplicativelyAndTheLimitsClimbBackAdditively() throws {
        var s = shaper {
            $0.defaults = ShapingLimits(connections: 10, messagesPerSecond: 100)
            $0.rules = [ThrottleRule(name: "gmail", matcher: try! ReplyMatcher(enhanced: "4.7.28"), action: .throttle(factor: 0.5),
                                     durationMillis: 600_000)]
            $0.rampStep = 0.25
            $0.rampIntervalMillis = 60_000
            $0.rampSuccesses = 1_000
        }
        let gmail = reply("421 4.7.28 Our system has detected an unusual rate of unsolicited mail; temporarily rate limited")
        let changes = s.observe(google, reply: gmail, category: .rateLimit, now: t0)
        #expect(changes.map(\.kind) == [.throttled])
        #expect(s.state(google).mode(at: t0) == .throttled)
        #expect(s.state(google).until(at: t0) == t0 + 600_000)
        #expect(s.effective(google, now: t0).connections == 5 && s.effective(google, now: t0).messagesPerSecond == 50)
        // A second one halves again.
        _ = s.observe(google, reply: gmail, category: .rateLimit, now: t0 + 1_000)
        #expect(s.state(google).factor == 0.25)
        #expect(s.effective(google, now: t0).connections == 2)
        // No climb during the hold (10 minutes from the last cut)…
        #expect(s.observe(google, reply: SMTPReply(250, nil, "ok"), category: nil, now: t0 + 600_000).isEmpty)
        #expect(s.state(google).factor == 0.25)
        // …then one step per interval, each an event, until the configured values.
        let step1 = s.observe(google, reply: SMTPReply(250, nil, "ok"), category: nil, now: t0 + 601_000)
        #expect(step1.isEmpty) // the hold ended: the interval counts from there
        let step2 = s.observe(google, reply: SMTPReply(250, nil, "ok"), category: nil, now: t0 + 661_000)
        #expect(step2.map(\.kind) == [.ramped] && s.state(google).factor == 0.5)
        _ = s.admitMessage(google, now: t0 + 721_000)
        #expect(s.state(google).factor == 0.75)
        let last = s.admitConnection(google, now: t0 + 781_000).1
        #expect(last.map(\.kind) == [.resumed])
        #expect(s.state(google).mode(at: t0 + 781_000) == .normal && s.state(google).reason == nil)
        #expect(s.effective(google, now: t0 + 781_000).connections == 10)
    }

    @Test func nothingStaysThrottledWhenNoMailAsks() {
        var s = shaper {
            $0.rules = [ThrottleRule(name: "r", matcher: try! ReplyMatcher(code: .exact(421)), action: .throttle(factor: 0.5), durationMillis: 1_000)]
            $0.rampStep = 0.5
            $0.rampIntervalMillis = 1_000
        }
        _ = s.observe(google, reply: SMTPReply(421, nil, "slow down"), category: nil, now: t0)
        #expect(s.advance(now: t0 + 999).isEmpty)
        #expect(s.advance(now: t0 + 1_000).isEmpty) // the hold ends; the interval starts
        #expect(s.advance(now: t0 + 2_000).map(\.kind) == [.resumed])
        #expect(s.state(google).mode(at: t0 + 2_000) == .normal)
    }

    @Test func sustainedSuccessClimbsSoonerThanTheInterval() {
        var s = shaper {
            $0.rules = [ThrottleRule(name: "r", matcher: try! ReplyMatcher(code: .exact(421)), action: .throttle(factor: 0.5), durationMillis: 1_000)]
            $0.rampSuccesses = 3
            $0.rampIntervalMillis = 3_600_000
            $0.rampStep = 0.5
        }
        _ = s.observe(google, reply: SMTPReply(421, nil, "slow down"), category: nil, now: t0)
        let ok = SMTPReply(250, nil, "ok")
        _ = s.observe(google, reply: ok, category: nil, now: t0 + 2_000)
        _ = s.observe(google, reply: ok, category: nil, now: t0 + 2_001)
        #expect(s.state(google).factor == 0.5)
        let c = s.observe(google, reply: ok, category: nil, now: t0 + 2_002)
        #expect(c.map(\.kind) == [.resumed] && s.state(google).factor == 1)
    }

    @Test func aSuspensionStopsEverythingAndEndsOnTime() {
        var s = shaper {
            $0.rules = [ThrottleRule(name: "yahoo-tss09", matcher: try! ReplyMatcher(pattern: "TSS09"), action: .suspend, durationMillis: 3_600_000)]
        }
        let c = s.observe(google, reply: reply("553 5.7.2 [TSS09] All messages from 192.0.2.1 will be permanently deferred"), category: .reputation, now: t0)
        #expect(c.map(\.kind) == [.suspended])
        #expect(s.admitConnection(google, now: t0 + 10).0 == .notBefore(t0 + 3_600_000))
        #expect(s.admitMessage(google, now: t0 + 3_599_999).0 == .notBefore(t0 + 3_600_000))
        let (answer, changes) = s.admitConnection(google, now: t0 + 3_600_000)
        #expect(answer == .go)
        #expect(changes.first?.kind == .resumed)
        // It comes back at half and climbs from there.
        #expect(s.state(google).mode(at: t0 + 3_600_000) == .throttled && s.state(google).factor == 0.5)
    }

    @Test func thresholdsCountWithinTheirWindowOnly() {
        var s = shaper {
            $0.rules = [ThrottleRule(name: "tal", matcher: try! ReplyMatcher(code: .exact(421), pattern: "try again later"), threshold: 3,
                                     windowMillis: 600_000, action: .throttle(factor: 0.5), durationMillis: 60_000)]
        }
        let r = SMTPReply(421, EnhancedStatus(4, 7, 0), "Try again later, closing connection.")
        #expect(s.observe(google, reply: r, category: nil, now: t0).isEmpty)
        #expect(s.observe(google, reply: r, category: nil, now: t0 + 1_000).isEmpty)
        // The first fell out of the window: still two.
        #expect(s.observe(google, reply: r, category: nil, now: t0 + 600_001).isEmpty)
        #expect(s.observe(google, reply: r, category: nil, now: t0 + 600_002).map(\.kind) == [.throttled])
        // Another destination's replies count for it alone.
        #expect(s.state(ShapingKey(destination: "x.test")).mode(at: t0) == .normal)
    }

    @Test func rulesMayBeLimitedToADestinationAndACategory() {
        var s = shaper {
            $0.rules = [ThrottleRule(name: "ms", destination: "microsoft", matcher: try! ReplyMatcher(code: .klass(4)), category: .rateLimit,
                                     action: .limit(ShapingLimits(connections: 1)), durationMillis: 60_000)]
            $0.defaults.connections = 8
        }
        let ms = ShapingKey(destination: "microsoft")
        let r = SMTPReply(451, EnhancedStatus(4, 7, 650), "The mail server [192.0.2.1] has been temporarily rate limited due to IP reputation.")
        #expect(s.observe(google, reply: r, category: .rateLimit, now: t0).isEmpty)
        #expect(s.observe(ms, reply: r, category: .reputation, now: t0).isEmpty)
        #expect(s.observe(ms, reply: r, category: .rateLimit, now: t0).map(\.kind) == [.throttled])
        #expect(s.effective(ms, now: t0).connections == 1)
        // After the duration the rule's limit goes and the factor climbs from half.
        _ = s.admitMessage(ms, now: t0 + 60_000)
        #expect(s.state(ms).ruleLimits == nil && s.effective(ms, now: t0 + 60_000).connections == 4)
    }

    @Test func operatorResumeEndsAutomaticThrottlingAndKeepsOperatorLimits() {
        var s = shaper {
            $0.rules = [ThrottleRule(name: "r", matcher: try! ReplyMatcher(code: .exact(421)), action: .suspend, durationMillis: 3_600_000)]
        }
        s.setOperator(google, paused: true, limits: ShapingLimits(messagesPerMinute: 5))
        _ = s.observe(google, reply: SMTPReply(421, nil, "no"), category: nil, now: t0)
        s.reset(google)
        #expect(s.state(google).mode(at: t0) == .normal)
        #expect(s.effective(google, now: t0).messagesPerMinute == 5)
    }

    @Test func theShippedRulesFireOnTheProvidersReplies() {
        var s = Shaper(config: ShapingConfig())
        let classifier = BounceClassifier()
        for (text, kind) in [
            ("421 4.7.28 Gmail has detected an unusual rate of unsolicited mail. To protect our users from spam, mail has been temporarily rate limited.", ShapingChange.Kind.throttled),
            ("451 4.7.650 The mail server [192.0.2.1] has been temporarily rate limited due to IP reputation.", .throttled),
            ("421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1", .throttled),
            ("553 5.7.2 [TSS09] All messages from 192.0.2.1 will be permanently deferred; Retrying will NOT succeed.", .suspended),
        ] {
            let key = ShapingKey(destination: text)
            let r = reply(text)
            #expect(s.observe(key, reply: r, category: classifier.classify(r), now: t0).map(\.kind) == [kind], "\(text)")
        }
    }
}
