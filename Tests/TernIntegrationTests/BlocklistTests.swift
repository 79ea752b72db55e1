import Foundation
import GRDB
import Testing
import TernDelivery
import TernProtocol
import TernRouting
import TernScheduler
import TernTestSupport
@testable import TernStore

/// Issue 19: blocklist monitoring against dnsmasq on loopback (never the
/// system resolver), answering as a listed and an unlisted zone, with a
/// listing that appears and is removed, and a zone that times out.
@Suite(.serialized) struct BlocklistTests {
    static let a = OutboundSource(name: "a", address: IPAddress("127.0.0.2")!, ehlo: "a.mail.sender.test")
    static let b = OutboundSource(name: "b", address: IPAddress("127.0.0.3")!, ehlo: "b.mail.sender.test")

    /// A dnsmasq that lists `listed` (source addresses) on bl.test with a
    /// reason, lists nothing on clean.test, and forwards slow.test to a
    /// server that never answers.
    static func dns(listing listed: [IPAddress], silent: SilentUDPServer) throws -> TestDNS {
        let names = listed.map { BlocklistMonitor.queryName($0, zone: "bl.test") }
        return try TestDNS(txt: names.map { ($0, "Listed for spam; see http://bl.test/lookup") },
                           a: names.map { ($0, "127.0.0.2") } + [("sender.test.dbl.test", "127.0.1.2")],
                           forward: [("slow.test", "127.0.0.1#\(silent.port)")])
    }

    func monitor(_ dns: TestDNS, _ book: SourceBook, _ store: Store, onListed: BlocklistConfig.OnListed,
                 domainZones: [String] = []) throws -> (BlocklistMonitor, CAresResolver) {
        var config = BlocklistConfig()
        config.zones = ["bl.test", "clean.test", "slow.test"]
        config.domainZones = domainZones
        config.onListed = onListed
        let resolver = try CAresResolver(servers: ["127.0.0.1:\(dns.port)"], timeoutMillis: 400, tries: 1)
        // The EHLO names' registered domain (a Public Suffix List would say sender.test).
        return (BlocklistMonitor(config: config, sources: book, dns: resolver, store: store,
                                 domainOf: { $0.split(separator: ".").suffix(2).joined(separator: ".") }), resolver)
    }

    @Test func listingsAreSeenRecordedAndPauseTheSourceUntilDelisted() async throws {
        let silent = SilentUDPServer()
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("tern-bl-\(UUID().uuidString)/t.sqlite").path
        let store = try Store(path: path)
        defer { store.close() }
        let book = SourceBook(sources: [BlocklistTests.a, BlocklistTests.b],
                              pools: [SourcePool(name: "main", members: [(BlocklistTests.a, 1), (BlocklistTests.b, 1)])], defaultPool: "main")
        func status(_ zone: String, _ source: String = "a") throws -> StoredBlocklistStatus? {
            try store.blocklistStatuses().first { $0.zone == zone && $0.source == source }
        }
        func events(_ kind: String) throws -> [[String: Any]] {
            try store.read { db in try String.fetchAll(db, sql: "SELECT detail FROM event WHERE kind = ? ORDER BY id", arguments: [kind]) }
                .map { (try JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any] ?? [:] }
        }

        // Phase 1: nothing listed.
        do {
            let dns = try BlocklistTests.dns(listing: [], silent: silent)
            let (m, r) = try monitor(dns, book, store, onListed: .pause)
            defer { r.shutdown() }
            let results = try await m.check()
            #expect(results.filter { $0.zone == "bl.test" }.allSatisfy { $0.status == .clear })
            #expect(results.filter { $0.zone == "clean.test" }.allSatisfy { $0.status == .clear })
            // The zone that does not answer: a temporary error, recorded nowhere.
            #expect(results.filter { $0.zone == "slow.test" }.allSatisfy { if case .failed = $0.status { true } else { false } })
            #expect(try status("slow.test") == nil)
            #expect(try status("bl.test")?.listed == false)
        }
        // Phase 2: a's address appears on bl.test, with a TXT reason.
        do {
            let dns = try BlocklistTests.dns(listing: [BlocklistTests.a.address], silent: silent)
            let (m, r) = try monitor(dns, book, store, onListed: .pause)
            defer { r.shutdown() }
            let results = try await m.check()
            #expect(results.first { $0.zone == "bl.test" && $0.source == "a" }?.status
                == .listed(code: "127.0.0.2", reason: "Listed for spam; see http://bl.test/lookup"))
            #expect(results.first { $0.zone == "bl.test" && $0.source == "b" }?.status == .clear)
            #expect(try status("bl.test")?.listed == true && status("bl.test")?.reason?.hasPrefix("Listed for spam") == true)
            let listed = try events("blocklist_listed").filter { $0["zone"] as? String == "bl.test" }
            #expect(listed.count == 1 && listed[0]["source"] as? String == "a" && listed[0]["code"] as? String == "127.0.0.2"
                && (listed[0]["reason"] as? String)?.hasPrefix("Listed for spam") == true)
            // on_listed = "pause": a leaves rotation; b still sends.
            #expect(book.candidates(pool: "main").map { $0?.name } == ["b"])
            // A second check with the same answers writes no new event.
            _ = try await m.check()
            #expect(try events("blocklist_listed").filter { $0["zone"] as? String == "bl.test" }.count == 1)
        }
        // Phase 3: the resolver times out on everything: temperror, no change of status.
        do {
            let resolver = try CAresResolver(servers: ["127.0.0.1:\(silent.port)"], timeoutMillis: 300, tries: 1)
            defer { resolver.shutdown() }
            var config = BlocklistConfig()
            config.zones = ["bl.test"]
            config.onListed = .pause
            let m = BlocklistMonitor(config: config, sources: book, dns: resolver, store: store)
            let results = try await m.check()
            #expect(results.allSatisfy { if case .failed = $0.status { true } else { false } })
            #expect(try status("bl.test")?.listed == true)
            #expect(book.candidates(pool: "main").map { $0?.name } == ["b"])
            #expect(try events("blocklist_delisted").isEmpty)
        }
        // Phase 4: delisted: an event, and a comes back.
        do {
            let dns = try BlocklistTests.dns(listing: [], silent: silent)
            let (m, r) = try monitor(dns, book, store, onListed: .pause)
            defer { r.shutdown() }
            // An answer slower than the resolver's 400 ms (a loaded CI
            // machine; seen once) is a temporary error that changes no
            // status, as phase 3 shows: the monitor's next round asks again.
            for _ in 0..<5 {
                _ = try await m.check()
                if try status("bl.test")?.listed == false { break }
            }
            #expect(try status("bl.test")?.listed == false)
            let delisted = try events("blocklist_delisted").filter { $0["zone"] as? String == "bl.test" }
            #expect(delisted.count == 1 && delisted[0]["source"] as? String == "a" && delisted[0]["code"] as? String == "127.0.0.2")
            #expect(Set(book.candidates(pool: "main").map { $0?.name }) == ["a", "b"])
        }
    }

    @Test func alertOnlyKeepsTheSourceInRotation() async throws {
        let silent = SilentUDPServer()
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("tern-bl-\(UUID().uuidString)/t.sqlite").path
        let store = try Store(path: path)
        defer { store.close() }
        let book = SourceBook(sources: [BlocklistTests.a], pools: [], defaultPool: nil)
        let dns = try BlocklistTests.dns(listing: [BlocklistTests.a.address], silent: silent)
        let (m, r) = try monitor(dns, book, store, onListed: .alert, domainZones: ["dbl.test"])
        defer { r.shutdown() }
        let results = try await m.check()
        #expect(try store.blocklistStatuses().contains { $0.zone == "bl.test" && $0.listed })
        // The EHLO name's domain is looked up on the domain list.
        #expect(results.first { $0.zone == "dbl.test" }.map { [$0.query == "sender.test", $0.status == .listed(code: "127.0.1.2", reason: nil)] }
            == [true, true])
        #expect(try store.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM event WHERE kind = 'blocklist_listed'") } == 2)
        #expect(book.candidates(pool: nil).map { $0?.name } == ["a"])
    }
}
