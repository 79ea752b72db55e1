import Foundation
import Testing
import TernProtocol
@testable import TernRouting
import TernTestSupport
#if canImport(Glibc)
import Glibc
#endif

@Suite struct RouterTests {
    let resolver = StaticResolver(
        mx: ["multi.test": [MXRecord(preference: 20, host: "backup.multi.test"), MXRecord(preference: 10, host: "a.multi.test"),
                            MXRecord(preference: 10, host: "b.multi.test")],
             "nullmx.test": [MXRecord(preference: 0, host: "")],
             "noaddr.test": [MXRecord(preference: 10, host: "ghost.noaddr.test")]],
        hosts: ["a.multi.test": [IPAddress("127.0.0.1")!], "b.multi.test": [IPAddress("127.0.0.2")!, IPAddress("::1")!],
                "backup.multi.test": [IPAddress("127.0.0.3")!], "implicit.test": [IPAddress("127.0.0.4")!],
                "relay.example": [IPAddress("127.0.0.9")!]],
        nxdomains: ["gone.test"], failures: ["flaky.test"])

    func hops(_ plan: RoutePlan) -> [String] {
        if case .hops(let h) = plan { return h.map(\.description) }
        return []
    }

    func reply(_ plan: RoutePlan) -> String {
        switch plan {
        case .bounce(let r): return "bounce \(r.code) \(r.enhanced!)"
        case .deferral(let r): return "defer \(r.code) \(r.enhanced!)"
        case .hops: return "hops"
        }
    }

    @Test func mxByPreferenceEqualOnesShuffled() async {
        let reversed = Router(resolver: resolver, remotePort: 2525, shuffle: { $0.reversed() })
        #expect(hops(await reversed.plan("multi.test")) == [
            "b.multi.test[127.0.0.2]:2525", "b.multi.test[::1]:2525", "a.multi.test[127.0.0.1]:2525", "backup.multi.test[127.0.0.3]:2525",
        ])
        let identity = Router(resolver: resolver, remotePort: 25, shuffle: { $0 })
        #expect(hops(await identity.plan("multi.test")).first == "a.multi.test[127.0.0.1]:25")
        // Over many runs both orders of the equal pair occur; the backup is always last.
        let real = Router(resolver: resolver)
        var firsts = Set<String>()
        for _ in 0..<64 {
            let h = hops(await real.plan("multi.test"))
            firsts.insert(String(h[0].prefix(1)))
            #expect(h.last == "backup.multi.test[127.0.0.3]:25")
        }
        #expect(firsts == ["a", "b"])
    }

    @Test func failureModes() async {
        let r = Router(resolver: resolver)
        #expect(hops(await r.plan("implicit.test")) == ["implicit.test[127.0.0.4]:25"]) // no MX: the domain itself
        #expect(reply(await r.plan("nullmx.test")) == "bounce 556 5.1.10")
        #expect(reply(await r.plan("gone.test")) == "bounce 550 5.1.2")
        #expect(reply(await r.plan("flaky.test")) == "defer 451 4.4.3")
        #expect(reply(await r.plan("noaddr.test")) == "defer 451 4.4.4")
        #expect(hops(await r.plan("[127.0.0.7]")) == ["[127.0.0.7][127.0.0.7]:25"])
        #expect(hops(await r.plan("[IPv6:::1]")) == ["[IPv6:::1][::1]:25"])
    }

    @Test func staticRoutesComeFirst() async throws {
        let routes = [try #require(StaticRoute(parsing: "special.test=127.0.0.5:2626")),
                      try #require(StaticRoute(parsing: "*=relay.example"))]
        let r = Router(routes: routes, resolver: resolver, remotePort: 2525)
        #expect(hops(await r.plan("special.test")) == ["127.0.0.5[127.0.0.5]:2626"])
        #expect(hops(await r.plan("gone.test")) == ["relay.example[127.0.0.9]:2525"]) // smarthost: no MX lookup at all
    }

    @Test func routeSyntax() {
        #expect(StaticRoute(parsing: "Example.TEST=mx.example.test:2525") == StaticRoute(domain: "example.test", host: "mx.example.test", port: 2525))
        #expect(StaticRoute(parsing: "*=[::1]:2626") == StaticRoute(domain: "*", host: "::1", port: 2626))
        #expect(StaticRoute(parsing: "a.test=[::1]") == StaticRoute(domain: "a.test", host: "::1", port: nil))
        #expect(StaticRoute(parsing: "a.test=127.0.0.1") == StaticRoute(domain: "a.test", host: "127.0.0.1", port: nil))
        for bad in ["a.test", "=host", "a.test=", "a.test=host:0", "a.test=host:99999", "a.test=[::1", "a.test=[::1]x"] {
            #expect(StaticRoute(parsing: bad) == nil, "\(bad)")
        }
    }
}

/// c-ares against a real DNS server (dnsmasq) on a loopback port.
@Suite(.serialized) struct CAresTests {
    @Test func mxAndAddressesFromDnsmasq() async throws {
        let dnsmasq = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"].first { FileManager.default.isExecutableFile(atPath: $0) }
        guard let dnsmasq else {
            Issue.record("dnsmasq is not installed; run .ci/run or `make test-deps` (interop tests never skip)")
            return
        }
        let port = freeLoopbackUDPPort()
        let p = Process()
        p.executableURL = URL(fileURLWithPath: dnsmasq)
        p.arguments = ["--no-daemon", "--port=\(port)", "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv",
                       "--no-hosts", "--local=/test/", "--pid-file=", "--user=root", "--local-ttl=300",
                       "--mx-host=mail.test,mx1.mail.test,10", "--mx-host=mail.test,mx2.mail.test,20",
                       "--host-record=mx1.mail.test,127.0.0.1", "--host-record=mx2.mail.test,127.0.0.2,::1",
                       "--host-record=plain.test,127.0.0.3"]
        p.standardError = FileHandle.nullDevice
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        // SIGKILL: a child inherits the test thread's blocked signals, so SIGTERM may never arrive.
        defer {
            kill(p.processIdentifier, SIGKILL)
            var status: Int32 = 0
            waitpid(p.processIdentifier, &status, 0) // not waitUntilExit: it can hang on Linux
        }
        let resolver = try CAresResolver(servers: ["127.0.0.1:\(port)"], timeoutMillis: 500, tries: 3)
        defer { resolver.shutdown() }
        // dnsmasq needs a moment to bind; retry the first query briefly.
        var mx: DNSAnswer<[MXRecord]> = .temporaryFailure("not asked")
        for _ in 0..<20 {
            mx = await resolver.mx("mail.test")
            if case .records = mx { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        guard case .records(let records) = mx else { Issue.record("MX lookup failed: \(mx)"); return }
        // The TTL comes from the raw answer (ares_parse_mx_reply does not give it).
        #expect(Set(records) == [MXRecord(preference: 10, host: "mx1.mail.test", ttl: 300), MXRecord(preference: 20, host: "mx2.mail.test", ttl: 300)])
        guard case .records(let both) = await resolver.addresses("mx2.mail.test") else { Issue.record("A/AAAA"); return }
        #expect(both.map(\.description) == ["127.0.0.2", "::1"])
        guard case .noRecords = await resolver.mx("plain.test") else { Issue.record("no MX expected"); return }
        guard case .nxdomain = await resolver.mx("missing.test") else { Issue.record("NXDOMAIN expected"); return }
        guard case .nxdomain = await resolver.addresses("missing.test") else { Issue.record("NXDOMAIN expected"); return }
        // Through the router: implicit MX for plain.test, MX order for mail.test.
        let router = Router(resolver: resolver, remotePort: 2525)
        guard case .hops(let hops) = await router.plan("mail.test") else { Issue.record("hops"); return }
        #expect(hops.map(\.description) == ["mx1.mail.test[127.0.0.1]:2525", "mx2.mail.test[127.0.0.2]:2525", "mx2.mail.test[::1]:2525"])
        guard case .hops(let implicit) = await router.plan("plain.test") else { Issue.record("implicit"); return }
        #expect(implicit.map(\.description) == ["plain.test[127.0.0.3]:2525"])
        // Many concurrent queries through the one c-ares thread.
        let answers = await withTaskGroup(of: Bool.self) { group in
            for _ in 0..<50 { group.addTask { if case .records = await resolver.addresses("mx1.mail.test") { return true }; return false } }
            return await group.reduce(0) { $0 + ($1 ? 1 : 0) }
        }
        #expect(answers == 50)
    }

    @Test func aDeadServerIsATemporaryFailure() async throws {
        let resolver = try CAresResolver(servers: ["127.0.0.1:9"], timeoutMillis: 200, tries: 1)
        defer { resolver.shutdown() }
        guard case .temporaryFailure = await resolver.mx("anything.test") else { Issue.record("expected a temporary failure"); return }
        #expect(throws: ResolverError.self) { try CAresResolver(servers: ["not an address"]) }
    }
}

@Suite struct LearningRoutingTests {
    /// A DNS response for `a.test` MX with two answers (TTL 300 and 120), the second name compressed.
    static let response: [UInt8] = {
        var m: [UInt8] = [0x12, 0x34, 0x81, 0x80, 0, 1, 0, 2, 0, 0, 0, 0]
        m += [1, 0x61, 4] + Array("test".utf8) + [0, 0, 15, 0, 1]          // question: a.test MX IN
        for (ttl, host) in [(UInt32(300), "mx1"), (UInt32(120), "mx2")] {
            m += [0xC0, 12, 0, 15, 0, 1]                                    // name: pointer to a.test; MX IN
            m += [UInt8(ttl >> 24), UInt8(ttl >> 16 & 0xFF), UInt8(ttl >> 8 & 0xFF), UInt8(ttl & 0xFF)]
            let rdata: [UInt8] = [0, 10, UInt8(host.utf8.count)] + Array(host.utf8) + [0xC0, 12]
            m += [0, UInt8(rdata.count)] + rdata
        }
        return m
    }()

    @Test func ttlFromARawAnswer() {
        let mx = DNSMessage.records(LearningRoutingTests.response, type: .mx)
        #expect(mx?.ttl == 120)
        #expect(mx?.records == [.mx(preference: 10, host: "mx1.a.test"), .mx(preference: 10, host: "mx2.a.test")])
        #expect(DNSMessage.records(LearningRoutingTests.response, type: .a)?.records.isEmpty == true)  // no A records
        #expect(DNSMessage.records(Array(LearningRoutingTests.response.prefix(40)), type: .mx) == nil) // truncated
        #expect(DNSMessage.records([1, 2, 3], type: .mx) == nil)
        // A name with a bad label type.
        var bad = LearningRoutingTests.response
        bad[12] = 0x80
        #expect(DNSMessage.records(bad, type: .mx) == nil)
    }

    @Test func breakerCoolDownGrowsAndOneSuccessCloses() {
        var p = BreakerPolicy()
        p.threshold = 3
        p.baseCooldownMillis = 60_000
        p.maxCooldownMillis = 200_000
        var r = HostRecord()
        r = r.failed("421 a", at: 0, policy: p).failed("421 b", at: 1, policy: p)
        #expect(r.failures == 2 && r.cooldownUntil == nil && !r.coolingDown(at: 2))
        r = r.failed("421 c", at: 2, policy: p)
        #expect(r.cooldownUntil == 60_002 && r.coolingDown(at: 60_001) && !r.coolingDown(at: 60_002))
        r = r.failed("421 d", at: 70_000, policy: p)
        #expect(r.cooldownUntil == 190_000) // doubled
        r = r.failed("421 e", at: 200_000, policy: p)
        #expect(r.cooldownUntil == 400_000 && r.lastError == "421 e") // capped at 200 s
        r = r.succeeded(at: 500_000)
        #expect(r.failures == 0 && r.cooldownUntil == nil && r.successes == 1 && r.lastSuccessAt == 500_000)
    }

    /// Found by the backlog benchmark (issue 21): twenty connections opened
    /// before the breaker opened failed after it, and each doubled the
    /// cool-down (eleven failures in one second: 28 minutes). A failure
    /// while cooling is one more error, not one more doubling.
    @Test func aBurstOfFailuresWhileCoolingIsOneFailure() {
        var p = BreakerPolicy()
        p.threshold = 3
        p.baseCooldownMillis = 60_000
        var r = HostRecord()
        for t in 0..<20 { r = r.failed("refused \(t)", at: Int64(t), policy: p) }
        #expect(r.failures == 3 && r.cooldownUntil == 60_002 && r.lastError == "refused 19" && r.lastFailureAt == 19)
        // The try after the cool-down doubles it.
        r = r.failed("refused again", at: 60_002, policy: p)
        #expect(r.failures == 4 && r.cooldownUntil == 60_002 + 120_000)
    }

    @Test func arrangeSkipsCoolingHostsAndPrefersHealthierAmongEqualPreference() {
        let a = Hop(host: "a.mx", port: 25, address: IPAddress("192.0.2.1")!, preference: 10)
        let b = Hop(host: "b.mx", port: 25, address: IPAddress("192.0.2.2")!, preference: 10)
        let b6 = Hop(host: "b.mx", port: 25, address: IPAddress("2001:db8::2")!, preference: 10)
        let c = Hop(host: "c.mx", port: 25, address: IPAddress("192.0.2.3")!, preference: 20)
        let records = [a.endpoint: HostRecord(failures: 2), c.endpoint: HostRecord(failures: 5, cooldownUntil: 1_000)]
        let (usable, skipped) = Breaker.arrange([a, b, b6, c], records: records, now: 500)
        #expect(usable == [b, b6, a])   // b is healthier than a at the same preference; c is cooling down
        #expect(skipped.map(\.hop) == [c] && skipped[0].until == 1_000)
        // A worse host of a better preference still comes before a lower preference.
        let later = Breaker.arrange([a, b, c], records: records, now: 2_000)
        #expect(later.usable == [b, a, c] && later.skipped.isEmpty)
    }

    /// Issue 15: a dead 127.0.0.1:9 tripped the breaker for "127.0.0.1", and
    /// a healthy route to 127.0.0.1:2626 then deferred everything. Health is
    /// kept per address and port.
    @Test func aDeadPortDoesNotCoolDownTheAddressesOtherPorts() {
        let dead = Hop(host: "127.0.0.1", port: 9, address: IPAddress("127.0.0.1")!)
        let live = Hop(host: "127.0.0.1", port: 2626, address: IPAddress("127.0.0.1")!)
        #expect(dead.endpoint == "[127.0.0.1]:9")
        let records = [dead.endpoint: HostRecord(failures: 9, cooldownUntil: 10_000)]
        let (usable, skipped) = Breaker.arrange([live], records: records, now: 500)
        #expect(usable == [live] && skipped.isEmpty)
        #expect(Breaker.arrange([dead], records: records, now: 500).usable.isEmpty)
    }

    /// Issue 19: a host that refuses one source address may take another:
    /// the breaker keeps a book per source and endpoint.
    @Test func theBreakerIsKeptPerSource() {
        let mx = Hop(host: "mx.test", port: 25, address: IPAddress("192.0.2.9")!)
        #expect(mx.breakerKey(source: "a") == "[192.0.2.9]:25 from a" && mx.breakerKey(source: nil) == mx.endpoint)
        let records = [mx.breakerKey(source: "a"): HostRecord(failures: 4, cooldownUntil: 10_000)]
        #expect(Breaker.arrange([mx], records: records, now: 500, source: "a").usable.isEmpty)
        #expect(Breaker.arrange([mx], records: records, now: 500, source: "b").usable == [mx])
        #expect(Breaker.arrange([mx], records: records, now: 500).usable == [mx])
    }

    final class CountingResolver: DNSResolver, @unchecked Sendable {
        var mxQueries = 0
        var answer: DNSAnswer<[MXRecord]> = .records([MXRecord(preference: 10, host: "mx.c.test", ttl: 120)])
        func mx(_ domain: String) async -> DNSAnswer<[MXRecord]> { mxQueries += 1; return answer }
        func addresses(_ host: String) async -> DNSAnswer<[IPAddress]> { .records([IPAddress("127.0.0.1")!]) }
    }

    final class MemoryCache: MXCache, @unchecked Sendable {
        var entries: [String: (DNSAnswer<[MXRecord]>, Int64)] = [:]
        func lookup(_ domain: String, now: Int64) -> DNSAnswer<[MXRecord]>? {
            guard let (a, until) = entries[domain], until > now else { return nil }
            return a
        }
        func store(_ domain: String, _ answer: DNSAnswer<[MXRecord]>, until: Int64, now: Int64) { entries[domain] = (answer, until) }
    }

    @Test func cachingResolverKeepsAnswersForTheirTTL() async {
        let base = CountingResolver(), cache = MemoryCache()
        let clock = ManualTime()
        let r = CachingResolver(base: base, cache: cache, clock: { clock.now })
        _ = await r.mx("C.test")
        _ = await r.mx("c.test")
        #expect(base.mxQueries == 1)
        #expect(cache.entries["c.test"]?.1 == 120_000)
        clock.now = 120_000
        _ = await r.mx("c.test")
        #expect(base.mxQueries == 2)
        // Negative answers are kept for the negative time; failures not at all.
        base.answer = .nxdomain
        _ = await r.mx("gone.test")
        _ = await r.mx("gone.test")
        #expect(base.mxQueries == 3 && cache.entries["gone.test"]?.1 == 120_000 + 300_000)
        base.answer = .temporaryFailure("SERVFAIL")
        _ = await r.mx("flaky.test")
        _ = await r.mx("flaky.test")
        #expect(base.mxQueries == 5 && cache.entries["flaky.test"] == nil)
        // TTLs are bounded: 5 s becomes 60 s.
        base.answer = .records([MXRecord(preference: 0, host: "mx.short.test", ttl: 5)])
        _ = await r.mx("short.test")
        #expect(cache.entries["short.test"].map { $0.1 } == Int64(180_000))
    }
}

final class ManualTime: @unchecked Sendable { var now: Int64 = 0 }

/// Issue 18 item 1: providers by MX host suffix.
@Suite struct ProviderTableTests {
    @Test func shippedProvidersByMXSuffix() {
        let t = ProviderTable()
        #expect(t.provider(forMX: "gmail-smtp-in.l.google.com") == "google")
        #expect(t.provider(forMX: "ASPMX.L.GOOGLE.COM.") == "google")               // case and a final dot
        #expect(t.provider(forMX: "alt1.gmr-smtp-in.l.googlemail.com") == "google")
        #expect(t.provider(forMX: "example-com.mail.protection.outlook.com") == "microsoft")
        #expect(t.provider(forMX: "mta5.am0.yahoodns.net") == "yahoo")
        #expect(t.provider(forMX: "mx01.mail.icloud.com") == "apple")
        #expect(t.provider(forMX: "notgoogle.com") == nil)                          // on label boundaries only
        #expect(t.provider(forMX: "mx.example.org") == nil)
        #expect(t.provider(forMX: "com") == nil)
        #expect(Set(ProviderTable.shipped.map(\.name)).count == ProviderTable.shipped.count)
        #expect(ProviderTable.shipped.allSatisfy { $0.name == $0.name.lowercased() })
    }

    @Test func userRulesAddAndTakePrecedenceLongestSuffixFirst() {
        let t = ProviderTable(custom: [ProviderRule(name: "Acme", mxSuffixes: ["mx.acme.example", ".Google.com."]),
                                       ProviderRule(name: "acme-eu", mxSuffixes: ["eu.mx.acme.example"])])
        #expect(t.provider(forMX: "a.mx.acme.example") == "acme")
        #expect(t.provider(forMX: "b.eu.mx.acme.example") == "acme-eu")            // the longest suffix wins
        #expect(t.provider(forMX: "aspmx.l.google.com") == "acme")                  // a user rule replaces a shipped suffix
        #expect(t.provider(forMX: "alt1.gmr-smtp-in.l.googlemail.com") == "google")
    }
}
