import Foundation
import Testing
import TernTestSupport
@testable import TernCLI
import TernListener
import TernProtocol
import TernDKIM

/// Issue 16 item 6: every setting declared once; the file, the flags,
/// `tern config show` and the reference all come from the declarations.
@Suite struct SettingsTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// docs/configuration.md is what the declarations generate.
    @Test func theConfigurationReferenceIsCurrent() throws {
        let committed = try String(contentsOf: SettingsTests.root.appendingPathComponent("docs/configuration.md"), encoding: .utf8)
        #expect(committed == TernSettings.reference(), "docs/configuration.md is stale: run tools/gen-config-docs")
    }

    @Test func keysAreUniqueAndTheReferenceNamesEveryOne() {
        let keys = TernSettings.declared.map(\.key)
        #expect(Set(keys).count == keys.count)
        let reference = TernSettings.reference()
        for setting in TernSettings.declared {
            #expect(reference.contains("| `\(setting.name)` |"), "\(setting.key) missing from the reference")
            #expect(!setting.help.isEmpty)
        }
        let flags = TernSettings.declared.compactMap(\.flag)
        #expect(Set(flags).count == flags.count)
    }

    /// The reference's example file (every key, every table) is itself a
    /// valid configuration.
    @Test func theReferencesExampleIsAValidConfiguration() throws {
        let reference = TernSettings.reference()
        let start = try #require(reference.range(of: "```toml\n"))
        let end = try #require(reference.range(of: "\n```", range: start.upperBound..<reference.endIndex))
        var s = TernSettings()
        try s.apply(toml: String(reference[start.upperBound..<end.lowerBound]))
        try s.validate()
        #expect(s.sources.count == 2 && s.pools.count == 1 && s.warmupPlans.count == 1 && s.poolRules.count == 1)
    }

    /// Every value the example file sets is applied, and every setting
    /// with a flag is reachable by that flag from `tern serve`'s options.
    @Test func everyFlagReachesItsSetting() throws {
        for setting in TernSettings.declared {
            guard let flag = setting.flag else { continue }
            var args = ["--db", "/tmp/tern-settings-test.sqlite"]
            switch setting.example ?? setting.get(TernSettings()) {
            case .int(let i): args += ["--\(flag)", String(i)]
            case .bool: args += ["--\(flag)"]
            case .string(let s): args += ["--\(flag)", s.isEmpty ? "/tmp/x.pem" : s]
            case .strings(let a): for item in (a.isEmpty ? ["127.0.0.1:53"] : a) { args += ["--\(flag)", item] }
            }
            if setting.key == "tls_cert" { args += ["--tls-key", "/tmp/k.pem"] }
            if setting.key == "tls_key" { args += ["--tls-cert", "/tmp/c.pem"] }
            if setting.key == "relay_domains" { args = ["--db", "/tmp/x.sqlite", "--relay-domain", "example.test"] }
            if setting.key == "routes" { args = ["--db", "/tmp/x.sqlite", "--route", "example.test=127.0.0.1:2626"] }
            let s = try ServeOptions.parse(args).resolved()
            #expect(s.origin(setting.key) == "flag --\(flag)", "\(setting.key): \(s.origins)")
        }
    }

    @Test func showSaysWhereEachValueCameFromAndIsAFileToStartFrom() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tern-show-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let file = dir.appendingPathComponent("tern.toml")
        try Data("""
            relay_domains = ["file.test"]
            [[listener]]
            address = "127.0.0.1:5587"
            role = "submission"
            plaintext_auth = true
            [delivery]
            retry_first = 120
            [limits]
            max_message_size = 5000
            """.utf8).write(to: file)
        let s = try ServeOptions.parse(["--config", file.path, "--hostname", "flag.test", "--max-message-size", "7000", "--db", "/tmp/x.sqlite"]).resolved()
        let shown = s.showTOML()
        let lines = shown.split(separator: "\n").map(String.init)
        func line(_ prefix: String) -> String? { lines.first { $0.hasPrefix(prefix) } }
        #expect(line("hostname = ")?.hasSuffix("# flag --hostname") == true)
        #expect(line("max_message_size = 7000")?.hasSuffix("# flag --max-message-size") == true)
        #expect(line("relay_domains = [\"file.test\"]")?.hasSuffix("# file \(file.path)") == true)
        #expect(line("retry_first = 120")?.hasSuffix("# file \(file.path)") == true)
        #expect(line("retry_max = 4000")?.hasSuffix("# default") == true)
        #expect(line("db = \"/tmp/x.sqlite\"")?.hasSuffix("# flag --db") == true)
        #expect(shown.contains("[[listener]]") && shown.contains("plaintext_auth = true"))
        // The output is a configuration: read back, it gives the same settings.
        var again = TernSettings()
        try again.apply(toml: shown)
        for setting in TernSettings.declared {
            #expect(setting.get(again) == setting.get(s), "\(setting.key)")
        }
        #expect(again.listen == s.listen)
        // JSON: one object per setting.
        let json = try JSONSerialization.jsonObject(with: Data(s.showJSON().utf8)) as? [[String: Any]]
        #expect(json?.count == TernSettings.declared.count)
        #expect(json?.first { $0["key"] as? String == "limits.max_message_size" }?["from"] as? String == "flag --max-message-size")
    }

    @Test func badFlagsAreExplained() {
        #expect(throws: ConfigError.self) { try ServeOptions.parse(["--max-message-size", "lots"]).resolved() }
        #expect(throws: ConfigError.self) { try ServeOptions.parse(["--remote-port", "70000"]).resolved() }
        #expect(throws: ConfigError.self) { try ServeOptions.parse(["--tls-policy", "sometimes"]).resolved() }
    }
}

/// Issue 17: DKIM keys in the configuration; a bad one is a clear error at start-up.
@Suite struct DKIMConfigTests {
    func folder() throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tern-dkimcfg-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return dir
    }

    @Test func keysAndPolicyLoad() throws {
        let dir = try folder()
        let ed = dir.appendingPathComponent("ed.pem")
        try Data(DKIMPrivateKey.generate(.ed25519).pem.utf8).write(to: ed)
        var s = TernSettings()
        try s.apply(toml: """
            [signing]
            canonicalization = "relaxed/simple"
            expiry = 86400
            over_sign = ["From"]
            [[dkim]]
            domain = "Example.TEST"
            selector = "s1"
            key_file = "\(ed.path)"
            algorithm = "ed25519"
            """)
        let signer = try #require(try s.dkimSigner())
        #expect(signer.keys.map(\.domain) == ["example.test"])
        #expect(signer.policy.headerCanon == .relaxed && signer.policy.bodyCanon == .simple && signer.policy.expirySeconds == 86400)
        #expect(s.showTOML().contains("[[dkim]]") && s.showTOML().contains("canonicalization = \"relaxed/simple\""))
        #expect(try TernSettings().dkimSigner() == nil)
    }

    @Test(arguments: [
        ("[[dkim]]\nselector = \"s\"\nkey_file = \"/k\"", "needs 'domain'"),
        ("[[dkim]]\ndomain = \"d.test\"\nkey_file = \"/k\"", "needs 'selector'"),
        ("[[dkim]]\ndomain = \"d.test\"\nselector = \"s\"", "needs 'key_file'"),
        ("[[dkim]]\ndomain = \"d.test\"\nselector = \"s\"\nkey_file = \"/k\"\nalgorithm = \"dsa\"", "rsa or ed25519"),
        ("[[dkim]]\ndomain = \"d.test\"\nselector = \"s\"\nkey_file = \"/k\"\nbits = 1", "unknown key 'dkim.bits'"),
        ("[signing]\ncanonicalization = \"loose\"", "HEADER/BODY"),
    ])
    func badTablesAreExplained(_ toml: String, _ message: String) {
        var s = TernSettings()
        do {
            try s.apply(toml: toml)
            Issue.record("accepted: \(toml)")
        } catch {
            #expect("\(error)".contains(message), "\(error)")
        }
    }

    @Test func badKeysStopTheStartWithTheReason() throws {
        let dir = try folder()
        let small = dir.appendingPathComponent("small.pem")
        try Data(runTool("/usr/bin/openssl", ["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"]).utf8).write(to: small)
        let ed = dir.appendingPathComponent("ed.pem")
        try Data(DKIMPrivateKey.generate(.ed25519).pem.utf8).write(to: ed)
        let garbage = dir.appendingPathComponent("garbage.pem")
        try Data("x".utf8).write(to: garbage)
        for (file, algorithm, message) in [(dir.appendingPathComponent("none.pem").path, nil, "cannot read the key file"),
                                          (small.path, nil, "1024 bits is too small"),
                                          (ed.path, "rsa", "the key is ed25519, the configuration says rsa"),
                                          (garbage.path, nil, "not an Ed25519 (PKCS#8) or RSA")] as [(String, String?, String)] {
            var s = TernSettings()
            try s.apply(toml: "[[dkim]]\ndomain = \"d.test\"\nselector = \"s\"\nkey_file = \"\(file)\"" + (algorithm.map { "\nalgorithm = \"\($0)\"" } ?? ""))
            #expect(throws: ConfigError.self) { try s.dkimSigner() }
            do { _ = try s.dkimSigner() } catch { #expect("\(error)".contains(message), "\(error)") }
        }
        var noKey = TernSettings()
        try noKey.apply(toml: "[signing]\nsign_as = \"esp.test\"")
        #expect(throws: ConfigError.self) { try noKey.dkimSigner() }
    }
}
