// `tern config show`: the effective configuration of `tern serve` with the
// same --config and flags, each value with where it came from; the output
// is TOML a file can start from. `tern config reference`: docs/configuration.md,
// generated from the settings' declarations (tools/gen-config-docs writes it).

import TernScheduler
import ArgumentParser
import Foundation
import TernListener
import TernStore

struct ConfigCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "config",
        abstract: "Show the effective configuration, or print the configuration reference.",
        subcommands: [Show.self, Reference.self])

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print the configuration `tern serve` would run with (the same --config and flags), and where each value came from.")

        @OptionGroup var options: ServeOptions

        @Option(help: "toml (valid TOML, origins as comments) or json.")
        var format: ShowFormat = .toml

        enum ShowFormat: String, ExpressibleByArgument, CaseIterable { case toml, json }

        func run() throws {
            let settings: TernSettings
            do { settings = try options.resolved() } catch { throw fail("\(error)", code: 78) }
            print(format == .json ? settings.showJSON() : settings.showTOML(), terminator: "")
        }
    }

    struct Reference: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print the configuration reference (docs/configuration.md) generated from the settings' declarations.")

        func run() { print(TernSettings.reference(), terminator: "") }
    }
}

extension TernSettings {
    func origin(_ key: String) -> String { origins[key] ?? "default" }

    /// The effective configuration as TOML, each value's origin as a comment.
    func showTOML() -> String {
        var out = "# tern config show: the effective configuration; after each value, where it came from\n"
        var table: String? = nil
        // Listeners with per-listener options need [[listener]] tables.
        let plain = listen.filter { !$0.plaintextAuth && $0.bareNewline == nil && $0.dkimSign && $0.verify == nil && !$0.spfReject }
        let special = listen.filter { $0.plaintextAuth || $0.bareNewline != nil || !$0.dkimSign || $0.verify != nil || $0.spfReject }
        for setting in TernSettings.declared {
            if setting.table != table {
                table = setting.table
                out += "\n[\(table!)]\n"
            }
            let value = setting.key == "listen" ? SettingValue.strings(plain.map(\.text)) : setting.get(self)
            var line = "\(setting.name) = \(value.toml)"
            if setting.kind == .text, value == .string(""), setting.defaultText == "none" { line = "# \(setting.name) = (none)" }
            out += line.padding(toLength: max(line.count, 44), withPad: " ", startingAt: 0) + "  # \(origin(setting.key))\n"
        }
        for l in special {
            out += "\n[[listener]]  # \(origin("listen"))\naddress = \(SettingValue.quoted(ListenAddress(l.host, l.port).text))\n"
            out += "role = \"\(l.role.rawValue)\"\nplaintext_auth = \(l.plaintextAuth)\n"
            if let b = l.bareNewline { out += "bare_newline = \"\(b.rawValue)\"\n" }
            if !l.dkimSign { out += "dkim = \"off\"\n" }
            if let v = l.verify { out += "verify = \"\(v.rawValue)\"\n" }
            if l.spfReject { out += "spf_reject = true\n" }
        }
        for p in providers {
            out += "\n[[provider]]  # \(origin("provider"))\nname = \(SettingValue.quoted(p.name))\n"
            out += "mx_suffixes = [" + p.mxSuffixes.map(SettingValue.quoted).joined(separator: ", ") + "]\n"
        }
        for (name, l) in shapingDestinations.sorted(by: { $0.key < $1.key }) {
            out += "\n[[shaping.destination]]  # \(origin("shaping.destination"))\nname = \(SettingValue.quoted(name))\n"
            out += TernSettings.limitsTOML(l)
        }
        for r in throttleRules {
            out += "\n[[throttle_rule]]  # \(origin("throttle_rule"))\nname = \(SettingValue.quoted(r.name))\n"
            if let d = r.destination { out += "destination = \(SettingValue.quoted(d))\n" }
            out += TernSettings.matcherTOML(r.matcher)
            if let c = r.category { out += "category = \"\(c.rawValue)\"\n" }
            if r.windowMillis > 0 { out += "threshold = \"\(r.threshold) in \(r.windowMillis / 1000)s\"\n" } else { out += "threshold = \(r.threshold)\n" }
            out += "action = \"\(r.action.name)\"\nduration = \"\(r.durationMillis / 1000)s\"\n"
            switch r.action {
            case .throttle(let f): out += "factor = \(f)\n"
            case .limit(let l): out += TernSettings.limitsTOML(l)
            case .suspend: break
            }
        }
        for r in bounceRules {
            out += "\n[[bounce_rule]]  # \(origin("bounce_rule"))\n" + TernSettings.matcherTOML(r.matcher) + "category = \"\(r.category.rawValue)\"\n"
        }
        out += sourcesTOML
        out += webhooksTOML
        for k in dkimKeys {
            out += "\n[[dkim]]  # \(origin("dkim"))\ndomain = \(SettingValue.quoted(k.domain))\nselector = \(SettingValue.quoted(k.selector))\n"
            out += "key_file = \(SettingValue.quoted(k.keyFile))\n"
            if let a = k.algorithm { out += "algorithm = \"\(a.rawValue)\"\n" }
        }
        return out
    }

    /// One object per setting: key, value, from.
    func showJSON() -> String {
        let items: [JSON] = TernSettings.declared.map { setting in
            let value: JSON
            switch setting.get(self) {
            case .int(let i): value = .int(i)
            case .bool(let b): value = .bool(b)
            case .string(let s): value = s.isEmpty && setting.defaultText == "none" ? .null : .string(s)
            case .strings(let a): value = .array(a.map { .string($0) })
            }
            return .object([("key", .string(setting.key)), ("value", value), ("from", .string(origin(setting.key)))])
        }
        return JSON.array(items).text + "\n"
    }

    // MARK: - The reference

    /// docs/configuration.md.
    static func reference() -> String {
        var out = """
            # Configuration

            <!-- Generated by `tern config reference` from Sources/TernCLI/SettingsTable.swift: run tools/gen-config-docs after changing a setting; a test fails when this file is stale. -->

            Every setting of `tern serve`. Back to the [README](../README.md).

            Settings come from built-in defaults, then the TOML file given with
            `--config FILE`, then command-line flags (a flag wins). An unknown key in
            the file is an error, so a typo cannot silently fall back to a default.
            `tern config show` (with the same `--config` and flags as `tern serve`)
            prints the configuration that would run, each value with where it came
            from; its output is a valid file to start from.

            ## Example

            Every key, with its default or an example value:

            ```toml

            """
        var table: String? = nil
        for setting in declared {
            if setting.table != table {
                table = setting.table
                if table == "delivery" { out += listenerExample }
                out += "\n[\(table!)]\n"
            }
            let value = setting.example ?? setting.get(TernSettings())
            let line = setting.kind == .text && value == .string("") ? "# \(setting.name) = \"…\"" : "\(setting.name) = \(value.toml)"
            out += line + "\n"
        }
        out += dkimExample
        out += providerExample
        out += shapingExample
        out += sourcesExample
        out += webhookExample
        out += "```\n\n## Reference\n"
        table = nil
        out += section("Top level")
        for setting in declared {
            if setting.table != table {
                table = setting.table
                if table == "delivery" { out += listenerSection }
                out += section("`[\(table!)]`")
            }
            out += row(setting)
        }
        out += dkimSection
        out += providerSection
        out += shapingSections
        out += sourcesSections
        out += webhookSection
        return out
    }

    private static var sourcesExample: String {
        "\n[[source]]                    # repeatable: a local address to send from (docs/sources.md)\n"
            + "name = \"a\"\naddress = \"192.0.2.10\"\nehlo = \"a.mail.example.test\"\nwarmup = \"default\"\n"
            + "\n[[source]]\nname = \"b\"\naddress = \"2001:db8::10\"\n"
            + "\n[[pool]]                      # repeatable: sources with weights; one is the default\n"
            + "name = \"main\"\nsources = { a = 1, b = 3 }\ndefault = true\n"
            + "\n[[pool_rule]]                 # repeatable: which pool a message leaves from; the first that matches\n"
            + "pool = \"main\"\nsender_domain = [\"news.example.test\"]\n"
            + "\n[[warmup_plan]]               # repeatable: a warm-up plan of your own\n"
            + "name = \"cautious\"\ndaily = [20, 40, 80, 160, 320]\nhours = 12\n"
    }

    private static var sourcesSections: String {
        var out = section("`[[source]]`")
        out += "| | | | | A local address outbound connections are bound to (docs/sources.md) |\n"
        out += "| `name` | | text | required | the source's name in pools, commands, events and `attempt.source` |\n"
        out += "| `address` | | text | required | an IPv4 or IPv6 address of this host |\n"
        out += "| `ehlo` | | text | `hostname` | the name given in EHLO/HELO from this source |\n"
        out += "| `warmup` | | text | none | a warm-up plan: `default` (built in) or a `[[warmup_plan]]` |\n"
        out += section("`[[pool]]`")
        out += "| | | | | Sources with weights; a connection takes the source furthest behind its share. Without pools, all sources form one, `default` |\n"
        out += "| `name` | | text | required | the pool's name (`[[pool_rule]]`, the `X-Tern-Pool:` tag) |\n"
        out += "| `sources` | | table or list | required | `{ a = 1, b = 3 }` (weights) or `[\"a\", \"b\"]` (equal) |\n"
        out += "| `default` | | boolean | false | mail no rule picks leaves from this pool (exactly one when there are pools) |\n"
        out += section("`[[pool_rule]]`")
        out += "| | | | | Picks the pool of a message at intake; the first rule whose conditions all hold wins (after the header tag) |\n"
        out += "| `pool` | | text | required | a `[[pool]]` |\n"
        out += "| `sender_domain` | | text or list | any | the envelope sender's domain, or a domain it is under |\n"
        out += "| `user` | | text or list | any | the authenticated user |\n"
        out += "| `listener` | | text or list | any | the listener's role: `smtp`, `submission` or `local` |\n"
        out += section("`[[warmup_plan]]`")
        out += "| | | | | A warm-up plan: the day's cap per destination, and how a day is judged |\n"
        out += "| `name` | | text | required | referred to by `[[source]]` `warmup` |\n"
        out += "| `daily` | | list of integers | required | messages per destination for each day, day 1 first |\n"
        out += "| `hours` | | integer | 24 | the day's cap is spread over this many hours (1–24) |\n"
        out += "| `max_deferral_rate` | | number | 0.1 | above this share of deferrals, the day holds |\n"
        out += "| `max_block_rate` | | number | 0.02 | above this share of block replies (category `reputation`), one day back |\n"
        out += "| `max_bounce_rate` | | number | 0.05 | above this share of hard bounces, one day back |\n"
        out += "| `min_sample` | | integer | 20 | destinations with fewer answers that day are not judged |\n"
        return out
    }

    private static var shapingExample: String {
        "\n[[shaping.destination]]       # repeatable: limits of a provider (as the providers' table names it) or a domain\n"
            + "name = \"google\"\nconnections = 10\nmessages_per_minute = 600\n"
            + "\n[[throttle_rule]]             # repeatable: tried before the shipped rules (docs/shaping.md)\n"
            + "name = \"acme-slow-down\"\ndestination = \"acme\"\ncode = \"4xx\"\npattern = \"slow down\"\nthreshold = \"3 in 10m\"\n"
            + "action = \"throttle\"\nfactor = 0.5\nduration = \"15m\"\n"
            + "\n[[bounce_rule]]               # repeatable: tried before the shipped classification\n"
            + "code = 550\npattern = \"mailbox is closed\"\ncategory = \"inactive_mailbox\"\n"
    }

    private static var shapingSections: String {
        var out = section("`[[shaping.destination]]`")
        out += "| | | | | Limits of one destination over `[shaping]`'s: a provider (all its domains share them) or a domain (its own, then) |\n"
        out += "| `name` | | text | required | a provider name (`google`, `microsoft`, …, or a `[[provider]]`) or a domain |\n"
        out += "| `connections`, `messages_per_connection`, `recipients_per_message`, `messages_per_second`, `messages_per_minute`, `messages_per_hour`, `burst`, `connections_per_minute` | | integer | `[shaping]`'s | as in `[shaping]`; 0: no limit |\n"
        out += "| `require_tls` | | boolean | `[shaping]`'s | connections must use TLS |\n"
        out += section("`[[throttle_rule]]`")
        out += "| | | | | An automation rule: a matching reply, seen `threshold` times, changes the destination's limits for `duration`; they climb back after it (docs/shaping.md) |\n"
        out += "| `name` | | text | required | shown in events, `tern shaping show` and `tern stats routes` |\n"
        out += "| `destination` | | text | every destination | only replies from this provider or domain |\n"
        out += "| `code` | | integer or text | any | `421`, or a class: `\"4xx\"`, `\"5xx\"` |\n"
        out += "| `enhanced` | | text | any | `\"4.7.28\"`, a prefix `\"4.7\"`, or `\"x.7.1\"` for both classes |\n"
        out += "| `pattern` | | text | any | a regular expression searched in the reply's text, case-insensitive |\n"
        out += "| `category` | | text | any | a bounce category (see `[[bounce_rule]]`) |\n"
        out += "| `threshold` | | integer or text | 1 | matches needed: `5`, or `\"5 in 10m\"` within a window |\n"
        out += "| `action` | | text | throttle | `throttle` (multiply rates and connections by `factor`), `limit` (these limits), `suspend` (nothing) |\n"
        out += "| `factor` | | number | 0.5 | for throttle: 0 < factor < 1 |\n"
        out += "| `duration` | | seconds or text | 10m | how long the action holds before the climb back: `600`, `\"10m\"`, `\"1h\"` |\n"
        out += "| limit keys | | integer | | for limit: any of `[[shaping.destination]]`'s |\n"
        out += section("`[[bounce_rule]]`")
        out += "| | | | | Gives matching replies a category, before the shipped rules: \(BounceCategory.allCases.map { "`\($0.rawValue)`" }.joined(separator: ", ")) |\n"
        out += "| `code`, `enhanced`, `pattern` | | | | as in `[[throttle_rule]]`; at least one |\n"
        out += "| `category` | | text | required | the category |\n"
        return out
    }

    private static var providerExample: String {
        "\n[[provider]]                  # repeatable: a provider recognised by its MX hosts, over the shipped table\n"
            + "name = \"acme\"\nmx_suffixes = [\"mx.acme.example\"]\n"
    }

    private static var providerSection: String {
        var out = section("`[[provider]]`")
        out += "| | | | | A mailbox provider recognised by its MX host names, added to the shipped table (providers.md); a suffix given here wins over a shipped one |\n"
        out += "| `name` | | text | required | the provider's name in lower case, as commands and statistics show it |\n"
        out += "| `mx_suffixes` | | list | required | MX host name suffixes (`mx.acme.example` matches `in1.mx.acme.example`); the longest match wins |\n"
        return out
    }

    private static var dkimExample: String {
        "\n[[dkim]]                      # repeatable: a signing key; a domain may have an rsa and an ed25519 key\n"
            + "domain = \"example.test\"\nselector = \"s2026\"\nkey_file = \"/etc/tern/dkim/example.test.s2026.pem\"\n"
            + "algorithm = \"ed25519\"\n"
    }

    private static var dkimSection: String {
        var out = section("`[[dkim]]`")
        out += "| | | | | A DKIM signing key, one table per key; mail from submission listeners, local submission and trusted or authenticated clients is signed at intake (see `[signing]` and the listener's `dkim`) |\n"
        for (name, kind, help) in dkimKeyNames {
            out += "| `\(name)` | | \(escape(kind.name)) | \(name == "algorithm" ? "from the key" : "required") | \(escape(help)) |\n"
        }
        return out
    }

    private static var listenerExample: String {
        "\n[[listener]]                  # repeatable; also listens, with per-listener options\naddress = \"127.0.0.1:5587\"\n"
            + "role = \"submission\"\nplaintext_auth = true\nbare_newline = \"normalize\"\n"
    }

    private static var listenerSection: String {
        var out = section("`[[listener]]`")
        out += "| | | | | An address to listen on with per-listener options, one table per listener, in addition to `listen` |\n"
        for (name, kind, help) in listenerKeys {
            let def = ["role": "relay", "plaintext_auth": "false", "address": "required", "dkim": "auto", "verify": "verify.policy",
                       "spf_reject": "false"][name] ?? "limits.bare_newline"
            out += "| `\(name)` | | \(escape(kind.name)) | \(def) | \(escape(help)) |\n"
        }
        return out
    }

    static func section(_ title: String) -> String {
        "\n### \(title)\n\n| key | flag | type | default | meaning |\n|---|---|---|---|---|\n"
    }

    private static func row(_ s: Setting) -> String {
        let value = s.get(TernSettings())
        let shown = s.defaultText ?? (value == .strings([]) ? "none" : value.toml)
        let flag = s.flag.map { "`--\($0)`" } ?? ""
        var kind = s.kind.name
        if let r = s.range, r != 0...Int.max { kind += r.upperBound == Int.max ? ", ≥ \(r.lowerBound)" : ", \(r.lowerBound)-\(r.upperBound)" }
        return "| `\(s.name)` | \(flag) | \(escape(kind)) | \(escape(shown)) | \(escape(s.help)) |\n"
    }

    private static func escape(_ s: String) -> String { s.replacingOccurrences(of: "|", with: "\\|") }
}
