// The TTL cache in front of the authentication look-ups, on an injected clock.

import Synchronization
import Testing
import TernProtocol
import TernRouting

/// Answers from a table and counts the questions.
final class TableDNS: AuthDNS, Sendable {
    let table: [String: DNSLookup]
    let asked = Mutex(0)
    init(_ table: [String: DNSLookup]) { self.table = table }
    func lookup(_ name: String, _ type: DNSRecordType) async -> DNSLookup {
        asked.withLock { $0 += 1 }
        return table["\(type) \(name.lowercased())"] ?? DNSLookup(.nxdomain)
    }
}

@Suite struct AuthDNSTests {
    @Test func answersAreKeptForTheirTTLAndFailuresNever() async {
        let base = TableDNS([
            "TXT example.test": DNSLookup(.records([.text(Array("v=spf1 -all".utf8))]), ttl: 120),
            "A down.test": DNSLookup(.temporaryFailure("SERVFAIL")),
        ])
        let now = Mutex<Int64>(0)
        let cache = CachingAuthDNS(base: base, clock: { now.withLock { $0 } })
        #expect(await cache.txt("example.test").records == ["v=spf1 -all"])
        #expect(await cache.txt("EXAMPLE.test").records == ["v=spf1 -all"]) // names compare without case
        now.withLock { $0 = 119_000 }
        _ = await cache.txt("example.test")
        #expect(base.asked.withLock { $0 } == 1)
        now.withLock { $0 = 121_000 }
        _ = await cache.txt("example.test")
        #expect(base.asked.withLock { $0 } == 2) // expired: asked again

        _ = await cache.ipv4("down.test")
        _ = await cache.ipv4("down.test")
        #expect(base.asked.withLock { $0 } == 4) // a temporary failure is not kept

        _ = await cache.ipv4("missing.test")
        _ = await cache.ipv4("missing.test")
        #expect(base.asked.withLock { $0 } == 5) // NXDOMAIN kept (negativeSeconds)
        #expect(cache.hitsAndMisses.hits == 3)
    }

    @Test func reverseNames() {
        #expect(reverseName(IPAddress("192.0.2.1")!) == "1.2.0.192.in-addr.arpa")
        #expect(reverseName(IPAddress("2001:db8::cb01")!) == "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa")
    }
}

extension DNSAnswer {
    var records: T? { if case .records(let r) = self { r } else { nil } }
}
