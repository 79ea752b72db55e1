// `tern recipients` and a running `tern serve`: unknown recipients of a
// relay domain refused at RCPT, and changes picked up without a restart.

import Foundation
import Testing

@Suite(.serialized) struct RecipientsBinaryTests {
    @Test func theRecipientTableIsCheckedAtRCPTAndFollowedLive() async throws {
        let dir = try tempFolder()
        let db = dir.appendingPathComponent("tern.sqlite").path
        let bin = try ternBinary()
        #expect(try runProgram(bin, ["migrate", "--db", db]).status == 0)
        let add = try await runProgramOffPool(bin, ["recipients", "add", "--db", db, "alice@Local.Test", "bob@local.test"])
        #expect(add.status == 0 && add.stdout.contains("added 2 addresses (2 new)"), "\(add.stderr)")
        let list = try await runProgramOffPool(bin, ["recipients", "list", "--db", db, "--format", "json"])
        #expect(list.stdout.contains("\"alice@local.test\"") && list.stdout.contains("\"bob@local.test\""), "\(list.stdout)")
        #expect(try await runProgramOffPool(bin, ["recipients", "add", "--db", db, "not an address"]).status == 65)
        let serve = try ServeProcess(["--listen", "127.0.0.1:0", "--db", db, "--no-deliver", "--resolver", "127.0.0.1:9",
                                      "--relay-domain", "local.test", "--trusted-network", "192.0.2.0/24"])
        let port = try await serve.port()
        // Blocking socket work off the cooperative pool (other suites' tasks run there).
        func rcpt(_ address: String) async throws -> String {
            try await offPool {
                let c = try RawClient(port: port)
                _ = try c.readReply()
                _ = try c.command("EHLO c.test")
                _ = try c.command("MAIL FROM:<x@sender.test>")
                return try c.command("RCPT TO:<\(address)>").status
            }
        }
        #expect(try await rcpt("alice@local.test") == "250 2.1.5")
        #expect(try await rcpt("carol@local.test") == "550 5.1.1")
        // Added while it runs: accepted within the refresh interval.
        #expect(try await runProgramOffPool(bin, ["recipients", "add", "--db", db, "carol@local.test"]).status == 0)
        #expect(await eventuallyAsync { try await rcpt("carol@local.test") == "250 2.1.5" })
        // Catch-all on: anyone.
        #expect(try await runProgramOffPool(bin, ["recipients", "catch-all", "--db", db, "local.test", "on"]).status == 0)
        #expect(await eventuallyAsync { try await rcpt("zed@local.test") == "250 2.1.5" })
        #expect(try await runProgramOffPool(bin, ["recipients", "catch-all", "--db", db, "local.test", "default"]).status == 0)
        #expect(try await runProgramOffPool(bin, ["recipients", "remove", "--db", db, "alice@local.test"]).stdout.contains("removed 1 of 1"))
        #expect(await eventuallyAsync { try await rcpt("alice@local.test") == "550 5.1.1" })
        #expect(await serve.terminate() == 0)
    }
}
