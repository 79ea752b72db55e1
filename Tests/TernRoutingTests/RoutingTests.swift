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
                       "--no-hosts", "--local=/test/", "--pid-file=", "--user=root",
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
        #expect(Set(records) == [MXRecord(preference: 10, host: "mx1.mail.test"), MXRecord(preference: 20, host: "mx2.mail.test")])
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
