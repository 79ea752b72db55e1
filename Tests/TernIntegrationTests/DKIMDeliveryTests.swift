// DKIM end to end (issue 17): a message submitted over a submission
// listener with AUTH (swaks) is signed once at intake, leaves through the
// SMTP client as stored, and the copy the sink received verifies with
// python3-dkim against keys served by dnsmasq on loopback. Mail relayed for
// the world (an untrusted client) is not signed.

import Foundation
import GRDB
import Logging
import NIOConcurrencyHelpers
import Testing
@testable import TernAuth
import TernDKIM
import TernListener
import TernProtocol
import TernRouting
@testable import TernStore
import TernTestSupport

@Suite(.serialized) struct DKIMDeliveryTests {
    @Test func submittedMailLeavesSignedAndVerifies() async throws {
        try requireTool("swaks")
        let ed = try DKIMPrivateKey.generate(.ed25519)
        let rsa = try DKIMPrivateKey.generate(.rsa)
        let signer = try DKIMSigner(keys: [DKIMKey(domain: "example.test", selector: "ed", key: ed),
                                           DKIMKey(domain: "example.test", selector: "rsa", key: rsa)])
        let dns = try TestDNS(txt: [("ed._domainkey.example.test", ed.dnsRecord), ("rsa._domainkey.example.test", rsa.dnsRecord)])
        let sink = try await SinkServer.start(group: server0Group)
        let box = NIOLockedValueBox<AccountAuthenticator?>(nil)
        let server = try await TestServer.start(delivery: DeliverySetup(routes: [StaticRoute(domain: "*", host: "127.0.0.1", port: sink.port)]),
                                                signer: signer) { config, store in
            // No trusted network: loopback clients are the world here, unless they log in.
            config.session.relay = RelayPolicy(relayDomains: ["local.test"], trustedNetworks: [])
            config.listen = [ListenAddress("127.0.0.1", 0), ListenAddress("127.0.0.1", 0, role: .submission, plaintextAuth: true)]
            let auth = AccountAuthenticator(store: store, throttle: AuthThrottle(policy: ThrottlePolicy()), logger: Logger(label: "test"), sleep: { _ in })
            box.withLockedValue { $0 = auth }
            config.authenticator = auth
        }
        defer { Task { await server.stop(); await box.withLockedValue { $0 }?.shutdown() } }
        try await server.store.addAccount(name: "alice@example.test", passwordHash: PasswordHasher(rounds: 1000).hash("pw 1"),
                                          senders: ["alice@example.test"], now: nowMillis())
        let submitted = try await runProgramOffPool("swaks", [
            "--server", "127.0.0.1", "--port", String(server.ports[1]), "--auth", "PLAIN", "--auth-user", "alice@example.test",
            "--auth-password", "pw 1", "--from", "alice@example.test", "--to", "bob@far.test", "--helo", "swaks.test",
            "--header", "Subject: signed at intake", "--body", "Hello,\n\nthis line ends in spaces   \n", "--timeout", "20"])
        #expect(submitted.status == 0, "\(submitted.stdout)\(submitted.stderr)")
        // From the world, to a relay domain: stored unsigned.
        let relayed = try await runProgramOffPool("swaks", [
            "--server", "127.0.0.1", "--port", String(server.ports[0]), "--from", "someone@elsewhere.test", "--to", "u@local.test",
            "--helo", "world.test", "--header", "From: <alice@example.test>", "--timeout", "20"])
        #expect(relayed.status == 0, "\(relayed.stdout)\(relayed.stderr)")
        #expect(await eventually { sink.messages.count == 2 })
        let bodies = try server.store.read { db in try Row.fetchAll(db, sql: "SELECT origin, body FROM message ORDER BY id") }
        let stored = bodies.map { String(decoding: $0["body"] as Data, as: UTF8.self) }
        #expect(stored[0].hasPrefix("DKIM-Signature: v=1; a=ed25519-sha256;") && stored[0].contains("DKIM-Signature: v=1; a=rsa-sha256;"))
        #expect(!stored[1].contains("DKIM-Signature"), "mail relayed for the world was signed")
        // The sink's copy verifies (both signatures).
        let copy = try #require(sink.messages.first { $0.mailCommand.contains("alice@example.test") })
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("tern-dkim-e2e-\(UUID().uuidString).eml")
        try Data(copy.data.utf8).write(to: file)
        defer { try? FileManager.default.removeItem(at: file) }
        let script = repoRoot.appendingPathComponent("Tests/TernDKIMTests/dkim_verify.py").path
        var verdict = ""
        for _ in 0..<20 {
            verdict = try await runProgramOffPool("/usr/bin/python3", [script, String(dns.port), file.path]).stdout
            if verdict.hasPrefix("ok") { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(verdict.hasPrefix("ok ") && verdict.hasSuffix(" 2\n"), "\(verdict)")
    }
}
