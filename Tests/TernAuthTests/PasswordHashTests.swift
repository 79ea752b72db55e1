// Password hashes, the failed-login throttle, and the account authenticator
// over a real store (hashes made with few rounds to keep tests quick).
import Foundation
import GRDB
import NIOConcurrencyHelpers
import Testing
@testable import TernAuth
import TernProtocol
@testable import TernStore

@Suite struct PasswordHashTests {
    @Test func hashesVerifyAndCarryTheirParameters() {
        let h = PasswordHasher(rounds: 1000)
        let stored = h.hash("correct horse")
        #expect(stored.hasPrefix("$pbkdf2-sha256$1000$"))
        #expect(PasswordHasher.verify("correct horse", against: stored))
        #expect(!PasswordHasher.verify("correct horsE", against: stored))
        #expect(!PasswordHasher.verify("", against: stored))
        // A fresh salt every time.
        #expect(h.hash("correct horse") != stored)
        #expect(PasswordHasher.isValidHash(stored))
    }

    @Test func knownVectorFromRFC7914() {
        // RFC 7914 §11: PBKDF2-HMAC-SHA256, P="passwd", S="salt", c=1, dkLen=64.
        let expected = "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc49ca9cccf179b645991664b39d77ef317c71b845b1e30bd509112041d3a19783"
        let derived = PasswordHasher.derive("passwd", salt: Array("salt".utf8), rounds: 1, length: 64)
        #expect(derived.map { String(format: "%02x", $0) }.joined() == expected)
    }

    @Test func malformedStoredHashesNeverMatch() {
        for bad in ["", "plain", "$pbkdf2-sha256$x$AAAA$AAAA", "$md5$1000$AAAA$AAAA", "$pbkdf2-sha256$1000$$AAAA",
                    "$pbkdf2-sha256$0$AAAA$AAAA", "$pbkdf2-sha256$1000$AAAA"] {
            #expect(!PasswordHasher.verify("x", against: bad), "\(bad)")
            #expect(!PasswordHasher.isValidHash(bad))
        }
        #expect(PasswordHasher.isValidHash(PasswordHasher.decoy))
        #expect(!PasswordHasher.verify("", against: PasswordHasher.decoy))
    }
}

@Suite struct ThrottleTests {
    func policy() -> ThrottlePolicy {
        var p = ThrottlePolicy()
        p.maxFailures = 3
        p.windowMillis = 60_000
        p.baseDelayMillis = 1000
        p.maxDelayMillis = 3000
        return p
    }

    @Test func delaysGrowThenTheAddressIsRefused() {
        let t = AuthThrottle(policy: policy())
        #expect(!t.checkBlocked("192.0.2.1", now: 0))
        #expect(t.recordFailure("192.0.2.1", now: 0) == (1, 1000))
        #expect(t.recordFailure("192.0.2.1", now: 10) == (2, 2000))
        #expect(!t.checkBlocked("192.0.2.1", now: 20))
        #expect(t.recordFailure("192.0.2.1", now: 20) == (3, 3000)) // capped
        #expect(t.checkBlocked("192.0.2.1", now: 30))
        // Another address is not affected.
        #expect(!t.checkBlocked("192.0.2.2", now: 30))
        // Refused while it keeps trying: each attempt restarts the quiet period.
        #expect(t.checkBlocked("192.0.2.1", now: 50_000))
        #expect(t.checkBlocked("192.0.2.1", now: 109_000))
        // Quiet for the whole window: forgiven.
        #expect(!t.checkBlocked("192.0.2.1", now: 169_001))
        #expect(t.failures("192.0.2.1", now: 169_001) == 0)
        #expect(t.recordFailure("192.0.2.1", now: 169_002) == (1, 1000))
    }

    @Test func successClearsAndOldFailuresExpire() {
        let t = AuthThrottle(policy: policy())
        _ = t.recordFailure("a", now: 0)
        _ = t.recordFailure("a", now: 1)
        t.recordSuccess("a")
        #expect(t.failures("a", now: 2) == 0)
        _ = t.recordFailure("b", now: 0)
        _ = t.recordFailure("b", now: 1)
        #expect(t.recordFailure("b", now: 61_001) == (1, 1000)) // the first two are outside the window
    }

    @Test func memoryIsBounded() {
        var p = policy()
        p.maxTracked = 100
        let t = AuthThrottle(policy: p)
        for i in 0..<1000 { _ = t.recordFailure("10.0.\(i / 256).\(i % 256)", now: Int64(i)) }
        #expect(t.failures("10.0.3.231", now: 1000) == 1) // the newest is kept
        #expect(t.failures("10.0.0.0", now: 1000) == 0)   // the oldest went
    }
}

@Suite struct AccountAuthenticatorTests {
    final class Recorder: Sendable {
        let sleeps = NIOLockedValueBox<[Int64]>([])
    }

    func makeStore() throws -> Store {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tern-auth-\(UUID().uuidString)")
        return try Store(path: dir.appendingPathComponent("tern.sqlite").path)
    }

    let client = ClientInfo(address: IPAddress("192.0.2.9"), addressText: "192.0.2.9", trusted: false)

    @Test func goodBadUnknownAndThrottled() async throws {
        let store = try makeStore()
        defer { store.close() }
        try await store.addAccount(name: "alice@example.test", passwordHash: PasswordHasher(rounds: 1000).hash("s3cret pass"),
                                   senders: ["alice@example.test", "@example.test"], now: 1)
        var policy = ThrottlePolicy()
        policy.maxFailures = 3
        let rec = Recorder()
        let auth = AccountAuthenticator(store: store, throttle: AuthThrottle(policy: policy), clock: { 5_000 },
                                        sleep: { ms in rec.sleeps.withLockedValue { $0.append(ms) } })
        // Names compare case-insensitively; the identity carries the allowed senders.
        let ok = await auth.authenticate(Credentials(username: "Alice@Example.test", password: "s3cret pass"), mechanism: .plain, client: client)
        #expect(ok == .success(AuthIdentity(name: "alice@example.test", allowedSenders: ["alice@example.test", "@example.test"])))
        #expect(await auth.authenticate(Credentials(username: "alice@example.test", password: "wrong"), mechanism: .login, client: client) == .failure)
        #expect(await auth.authenticate(Credentials(username: "nobody", password: "s3cret pass"), mechanism: .plain, client: client) == .failure)
        #expect(await auth.authenticate(Credentials(username: "alice@example.test", password: "wrong2"), mechanism: .plain, client: client) == .failure)
        #expect(rec.sleeps.withLockedValue { $0 } == [1000, 2000, 4000])
        // The fourth attempt is refused unchecked, even with the right password.
        #expect(await auth.authenticate(Credentials(username: "alice@example.test", password: "s3cret pass"), mechanism: .plain, client: client) == .throttled)
        // Each failure and the refusal are events; no password is in any of them.
        let events = try store.read { db in try Row.fetchAll(db, sql: "SELECT kind, detail FROM event WHERE message_id IS NULL ORDER BY id") }
        #expect(events.map { $0["kind"] as String } == ["auth_failed", "auth_failed", "auth_failed", "auth_blocked"])
        let details = events.map { $0["detail"] as String }
        #expect(details[0].contains("\"client\":\"192.0.2.9\"") && details[0].contains("\"user\":\"alice@example.test\""))
        #expect(details[0].contains("\"mechanism\":\"LOGIN\"") && details[2].contains("\"failures\":3"))
        #expect(!details.joined().contains("wrong") && !details.joined().contains("s3cret"))
        await auth.shutdown()
    }

    /// Issue 15: AUTH failures count per client network, so an IPv6 host
    /// cannot reset its count by moving to another address of its /64.
    @Test func failuresCountPerIPv6Slash64() async throws {
        let store = try makeStore()
        defer { store.close() }
        var policy = ThrottlePolicy()
        policy.maxFailures = 2
        let auth = AccountAuthenticator(store: store, throttle: AuthThrottle(policy: policy), clock: { 5_000 }, sleep: { _ in })
        func from(_ a: String) -> ClientInfo { ClientInfo(address: IPAddress(a), addressText: a, trusted: false) }
        let wrong = Credentials(username: "x", password: "y")
        #expect(await auth.authenticate(wrong, mechanism: .plain, client: from("2001:db8:7:7::1")) == .failure)
        #expect(await auth.authenticate(wrong, mechanism: .plain, client: from("2001:db8:7:7::2")) == .failure)
        #expect(await auth.authenticate(wrong, mechanism: .plain, client: from("2001:db8:7:7:abcd::3")) == .throttled)
        #expect(await auth.authenticate(wrong, mechanism: .plain, client: from("2001:db8:7:8::1")) == .failure) // another /64
        await auth.shutdown()
    }

    @Test func storeFailureIsUnavailable() async throws {
        let store = try makeStore()
        let auth = AccountAuthenticator(store: store, clock: { 1 }, sleep: { _ in })
        store.close()
        #expect(await auth.authenticate(Credentials(username: "a", password: "b"), mechanism: .plain, client: client) == .unavailable)
        await auth.shutdown()
    }

    @Test func accountAdministration() async throws {
        let store = try makeStore()
        defer { store.close() }
        try await store.addAccount(name: "bob", passwordHash: "$pbkdf2-sha256$1$AAAA$AAAA", senders: ["bob@x.test"], now: 10)
        await #expect(throws: StoreError.self) {
            try await store.addAccount(name: "BOB", passwordHash: "$pbkdf2-sha256$1$AAAA$AAAA", senders: [], now: 11)
        }
        #expect(try await store.setAccountSenders(name: "bob", senders: ["@x.test", "*"], now: 12))
        #expect(try await store.setAccountPassword(name: "Bob", passwordHash: "$pbkdf2-sha256$2$AAAA$AAAA", now: 13))
        let bob = try #require(try store.account(named: "bob"))
        #expect(bob.senders == ["@x.test", "*"] && bob.passwordHash.hasPrefix("$pbkdf2-sha256$2$") && bob.createdAt == 10 && bob.updatedAt == 13)
        #expect(try !(await store.setAccountPassword(name: "carol", passwordHash: "x", now: 14)))
        #expect(try await store.removeAccount(name: "bob"))
        #expect(try !(await store.removeAccount(name: "bob")))
        #expect(try store.accounts().isEmpty)
    }
}
