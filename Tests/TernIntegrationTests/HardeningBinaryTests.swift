// Issue 15 against the real binary: one server per database, private
// files, and CLI commands that find the server's database and never make
// a new one.

import Foundation
import Testing

@Suite(.serialized) struct HardeningBinaryTests {
    func mode(_ path: String) -> Int {
        ((try? FileManager.default.attributesOfItem(atPath: path))?[.posixPermissions] as? Int) ?? -1
    }

    @Test func aSecondServeOnTheSameDatabaseExitsAndTheFilesArePrivate() async throws {
        let dir = try tempFolder()
        let db = dir.appendingPathComponent("data/tern.sqlite").path // the folder does not exist yet
        let bin = try ternBinary()
        let args = ["--listen", "127.0.0.1:0", "--db", db, "--no-deliver", "--resolver", "127.0.0.1:9"]
        let first = try ServeProcess(args)
        _ = try await first.port()
        let second = try await runProgramOffPool(bin, ["serve"] + args)
        #expect(second.status == 75, "\(second.stderr)")
        #expect(second.stderr.contains("another `tern serve` (pid \(first.process.processIdentifier)) is running on \(db)"), "\(second.stderr)")
        // CLI commands work beside the running server.
        #expect(try await runProgramOffPool(bin, ["queue", "list", "--db", db]).status == 0)
        // Everything it made is for its user alone.
        #expect(mode(dir.appendingPathComponent("data").path) == 0o700)
        for file in [db, db + "-wal", db + "-shm", db + ".lock"] { #expect(mode(file) == 0o600, "\(file)") }
        #expect(await first.terminate() == 0)
        // The lock went with it: the next one starts.
        let third = try ServeProcess(args)
        _ = try await third.port()
        #expect(await third.terminate() == 0)
    }

    @Test func aDatabaseOthersCanReadIsRefusedUnlessAllowed() async throws {
        let dir = try tempFolder()
        let db = dir.appendingPathComponent("tern.sqlite").path
        let bin = try ternBinary()
        #expect(try await runProgramOffPool(bin, ["migrate", "--db", db]).status == 0)
        chmod(db, 0o644)
        let args = ["--listen", "127.0.0.1:0", "--db", db, "--no-deliver", "--resolver", "127.0.0.1:9"]
        let refused = try await runProgramOffPool(bin, ["serve"] + args)
        #expect(refused.status == 77)
        #expect(refused.stderr.contains("readable by other users (mode 644)"), "\(refused.stderr)")
        let allowed = try ServeProcess(args + ["--allow-shared-db"])
        _ = try await allowed.port()
        #expect(allowed.log.contains("allowed by --allow-shared-db"))
        #expect(await allowed.terminate() == 0)
    }

    @Test func commandsFindTheServersDatabaseAndNeverCreateOne() throws {
        let dir = try tempFolder()
        let bin = try ternBinary()
        let env = ["PATH": "/usr/bin:/bin", "HOME": dir.path]
        // No database yet: sendmail says so and makes none.
        let missing = dir.appendingPathComponent("q/tern.sqlite").path
        let none = try runProgram(bin, ["sendmail", "a@x.test"], stdin: "Subject: s\n\nx\n", environment: env.merging(["TERN_DB": missing]) { $1 })
        #expect(none.status == 75 && none.stderr.contains("no queue at \(missing)"), "\(none.stderr)")
        #expect(!FileManager.default.fileExists(atPath: missing))
        #expect(!FileManager.default.fileExists(atPath: dir.appendingPathComponent(".local/share/tern").path))
        // TERN_DB names it for every command.
        #expect(try runProgram(bin, ["migrate"], environment: env.merging(["TERN_DB": missing]) { $1 }).status == 0)
        let sent = try runProgram(bin, ["sendmail", "a@x.test"], stdin: "Subject: s\n\nx\n", environment: env.merging(["TERN_DB": missing]) { $1 })
        #expect(sent.status == 0, "\(sent.stderr)")
        let listed = try runProgram(bin, ["queue", "list", "--format", "json"], environment: env.merging(["TERN_DB": missing]) { $1 })
        #expect(listed.stdout.contains("a@x.test"))
        // Without anything, the default is absolute (under $HOME for a user, /var/lib/tern for root).
        let defaultRun = try runProgram(bin, ["queue", "list"], environment: env)
        #expect(defaultRun.status == 66)
        #expect(defaultRun.stderr.contains(getuid() == 0 ? "/var/lib/tern/tern.sqlite" : "\(dir.path)/.local/share/tern/tern.sqlite"), "\(defaultRun.stderr)")
        // A relative db in a config file is relative to the file, wherever the command runs.
        let config = dir.appendingPathComponent("etc/tern.toml")
        try FileManager.default.createDirectory(at: config.deletingLastPathComponent(), withIntermediateDirectories: true)
        try Data("db = \"../spool/tern.sqlite\"\n".utf8).write(to: config)
        #expect(try runProgram(bin, ["migrate", "--config", config.path], environment: env).status == 0)
        #expect(FileManager.default.fileExists(atPath: dir.appendingPathComponent("spool/tern.sqlite").path))
    }
}
