import Foundation
import NIOCore
import Testing
@testable import TernIntake
import TernProtocol
@testable import TernStore

/// Issue 19: which source pool a message leaves from, chosen once at intake.
@Suite struct PoolTests {
    let chooser = PoolChooser(rules: [PoolRule(pool: "bulk", senderDomains: ["news.example"]),
                                      PoolRule(pool: "tenant", users: ["app1"]),
                                      PoolRule(pool: "relay", listeners: ["smtp"]),
                                      PoolRule(pool: "both", senderDomains: ["both.example"], users: ["app2"])],
                              pools: ["bulk", "tenant", "relay", "both", "vip"])

    @Test func rulesPickThePoolInOrderAndAllConditionsOfARuleMustHold() {
        // Sender domain, or a domain under it.
        #expect(chooser.choose(mailFrom: "a@news.example", authUser: nil, origin: .submission, tag: nil, mayTag: true) == "bulk")
        #expect(chooser.choose(mailFrom: "a@mail.NEWS.example", authUser: nil, origin: .submission, tag: nil, mayTag: true) == "bulk")
        #expect(chooser.choose(mailFrom: "a@othernews.example", authUser: nil, origin: .submission, tag: nil, mayTag: true) == nil)
        // Authenticated user.
        #expect(chooser.choose(mailFrom: "x@y.example", authUser: "app1", origin: .submission, tag: nil, mayTag: true) == "tenant")
        // Listener role.
        #expect(chooser.choose(mailFrom: "x@y.example", authUser: nil, origin: .smtp, tag: nil, mayTag: false) == "relay")
        // Both conditions of one rule.
        #expect(chooser.choose(mailFrom: "x@both.example", authUser: "app2", origin: .submission, tag: nil, mayTag: true) == "both")
        #expect(chooser.choose(mailFrom: "x@both.example", authUser: "app3", origin: .submission, tag: nil, mayTag: true) == nil)
        // The null sender matches no domain rule.
        #expect(chooser.choose(mailFrom: "", authUser: nil, origin: .local, tag: nil, mayTag: true) == nil)
    }

    @Test func aTagChoosesFromClientsThatMayAndNamesOnlyExistingPools() {
        #expect(chooser.choose(mailFrom: "a@news.example", authUser: nil, origin: .submission, tag: " vip ", mayTag: true) == "vip")
        // A stranger's tag is ignored: the rules decide.
        #expect(chooser.choose(mailFrom: "a@news.example", authUser: nil, origin: .smtp, tag: "vip", mayTag: false) == "bulk")
        // An unknown pool name is ignored.
        #expect(chooser.choose(mailFrom: "a@news.example", authUser: nil, origin: .submission, tag: "nope", mayTag: true) == "bulk")
    }

    @Test func intakeStoresThePoolAndRemovesTheTagBeforeSigning() throws {
        let store = try Store(path: tempDB())
        defer { store.close() }
        let intake = Intake(store: store, hostname: "mx.test", pools: chooser)
        let body = ByteBuffer(string: "Subject: hi\r\nX-Tern-Pool: vip\r\nx-tern-pool: bulk\r\nFrom: a@x.test\r\n\r\nX-Tern-Pool: in the body stays\r\n")
        var trusted = envelope(["b@dest.test"])
        trusted.trustedClient = true
        let m = intake.prepare(trusted, body: body, origin: .smtp, authUser: nil)
        #expect(m.pool == "vip")
        let text = String(decoding: m.body, as: UTF8.self)
        #expect(!text.lowercased().contains("x-tern-pool: vip") && !text.contains("x-tern-pool: bulk"))
        #expect(text.contains("Subject: hi\r\nFrom: a@x.test\r\n\r\nX-Tern-Pool: in the body stays\r\n"))
        // From a stranger on port 25: the tag is removed all the same, and ignored.
        let stranger = intake.prepare(envelope(["b@dest.test"]), body: body, origin: .smtp, authUser: nil)
        #expect(stranger.pool == "relay")
        #expect(!String(decoding: stranger.body, as: UTF8.self).contains("X-Tern-Pool: vip"))
        // Without pools, nothing is read or removed.
        let plain = Intake(store: store, hostname: "mx.test").prepare(trusted, body: body, origin: .smtp, authUser: nil)
        #expect(plain.pool == nil && String(decoding: plain.body, as: UTF8.self).contains("X-Tern-Pool: vip"))
    }

    @Test func recipientsCarryThePoolAndClaimsKeepPoolsApart() async throws {
        let store = try Store(path: tempDB())
        defer { store.close() }
        let intake = Intake(store: store, hostname: "mx.test", pools: chooser)
        var e = envelope(["b@dest.test"], from: "a@news.example")
        e.trustedClient = true
        _ = await intake.accept(e, body: ByteBuffer(string: "Subject: 1\r\n\r\nx\r\n"), origin: .submission)
        _ = await intake.accept(envelope(["c@dest.test"], from: "a@plain.example"), body: ByteBuffer(string: "Subject: 2\r\n\r\nx\r\n"),
                                origin: .submission)
        let due = try store.dueDomains(now: .max / 2)
        #expect(Set(due.map(\.lane)) == [Lane(domain: "dest.test", pool: "bulk"), Lane(domain: "dest.test")])
        let bulk = try await store.claim(Lane(domain: "dest.test", pool: "bulk"), now: .max / 2, owner: "t", leaseUntil: .max / 2, limit: 10)
        #expect(bulk.map(\.address) == ["b@dest.test"])
        let plain = try await store.claim(Lane(domain: "dest.test"), now: .max / 2, owner: "t", leaseUntil: .max / 2, limit: 10)
        #expect(plain.map(\.address) == ["c@dest.test"])
    }
}
