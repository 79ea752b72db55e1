import Foundation
import Testing
@testable import TernCLI
import TernListener
import TernProtocol

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
