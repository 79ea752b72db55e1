// Issue 15, mail loops end to end: a message routed to the server's own
// address (measured before the fix: 4,144 messages in 10 seconds, and
// growing) ends in one bounce; a message that made too many hops is
// refused at intake.

import Foundation
import Testing
import TernListener
import TernRouting
import TernTestSupport

@Suite(.serialized) struct LoopTests {
    @Test func mailToTheServersOwnAddressEndsInOneBounce() async throws {
        let port = freeLoopbackTCPPort()
        let server = try await TestServer.start(delivery: DeliverySetup(routes: [], remotePort: port)) { c, _ in
            c.listen = [ListenAddress("127.0.0.1", port)]
        }
        defer { Task { await server.stop() } }
        let c = try server.greetedClient()
        let reply = try c.sendMessage(from: "x@sender.test", to: ["a@[127.0.0.1]"], body: "Subject: loop\r\n\r\nround and round\r\n")
        #expect(reply.status == "250 2.0.0")
        #expect(await eventually { try server.count("SELECT count(*) FROM recipient WHERE address = 'a@[127.0.0.1]' AND state = 'bounced'") == 1 })
        #expect(try server.count("SELECT count(*) FROM recipient WHERE address = 'a@[127.0.0.1]' AND last_enhanced = '5.4.6' AND last_text LIKE '%loops back to myself%'") == 1)
        // The bounce to the sender is the only other message, and nothing grows.
        #expect(await eventually { try server.count("SELECT count(*) FROM message WHERE origin = 'dsn'") == 1 })
        try await Task.sleep(for: .milliseconds(500))
        #expect(try server.count("SELECT count(*) FROM message") == 2)
        #expect(try server.count("SELECT count(*) FROM message WHERE client_address = '127.0.0.1' AND origin = 'smtp'") == 1)
    }

    @Test func tooManyHopsAreRefusedAtIntake() async throws {
        let server = try await TestServer.start()
        defer { Task { await server.stop() } }
        let c = try server.greetedClient()
        let hop = "Received: from a.test by b.test; Sun, 6 Dec 2026 00:00:00 +0000\r\n"
        let looped = try c.sendMessage(from: "x@sender.test", to: ["b@local.test"], body: String(repeating: hop, count: 50) + "Subject: x\r\n\r\nx\r\n")
        #expect(looped.status == "554 5.4.6")
        #expect(looped.last.contains("too many hops"))
        let fine = try c.sendMessage(from: "x@sender.test", to: ["b@local.test"], body: String(repeating: hop, count: 49) + "Subject: x\r\n\r\nx\r\n")
        #expect(fine.status == "250 2.0.0")
        #expect(try server.count("SELECT count(*) FROM message") == 1)
    }
}
