// `tern auth spf|dkim-verify|dmarc`: the checks intake runs on mail from
// other MTAs, one at a time, with the DNS steps they took, for debugging a
// sender's set-up. Each uses --resolver or the configuration's resolvers,
// like serve; `--format json` prints an object whose "result" is one of the
// RFC's result words.

import ArgumentParser
import Foundation
import TernMailAuth
import TernProtocol
import TernRouting
import TernStore

struct AuthCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "auth", abstract: "Check SPF, DKIM and DMARC as intake does, and show the DNS steps.",
        subcommands: [SPF.self, DKIMVerify.self, DMARC.self])

    enum Format: String, ExpressibleByArgument, CaseIterable { case text, json }

    /// --config, --resolver, --format: as serve reads them.
    struct Options: ParsableArguments {
        @Option(name: .long, help: ArgumentHelp("TOML configuration file (its resolvers, hostname and [verify]).", valueName: "FILE"))
        var config: String?
        @Option(help: ArgumentHelp("DNS server; repeatable (default: the configuration's, else the system's).", valueName: "HOST:PORT"))
        var resolver: [String] = []
        @Option(help: "text or json.") var format: Format = .text

        func settings() throws -> TernSettings {
            var s = TernSettings()
            if let c = config { try s.apply(configFile: c) }
            return s
        }

        /// The resolver the checks use (--resolver, else the configuration's), and the same TTL cache as serve's in front of it.
        func dns(_ s: TernSettings) throws -> (CAresResolver, CachingAuthDNS) {
            let r = try s.resolver(overriding: resolver)
            return (r, CachingAuthDNS(base: r, clock: { nowMillis() }))
        }
    }

    static func spfJSON(_ v: SPFVerdict) -> JSON {
        .object([("result", .string(v.result.rawValue)), ("identity", .string(v.identity)), ("domain", .string(v.domain)),
                 ("reason", .string(v.reason)), ("explanation", v.explanation.map(JSON.string) ?? .null),
                 ("steps", .array(v.steps.map(JSON.string)))])
    }

    static func spfText(_ v: SPFVerdict) -> String {
        var out = "SPF (\(v.identity) \(v.domain)): \(v.result.rawValue)\n  \(v.reason)\n"
        if let e = v.explanation { out += "  explanation: \(e)\n" }
        for s in v.steps { out += "  dns: \(s)\n" }
        return out
    }

    static func dkimJSON(_ sigs: [DKIMSignatureVerdict]) -> JSON {
        .array(sigs.map { s in
            .object([("result", .string(s.result.rawValue)), ("domain", .string(s.domain)), ("selector", .string(s.selector)),
                     ("algorithm", .string(s.algorithm)), ("key", .string("\(s.selector)._domainkey.\(s.domain)")), ("reason", .string(s.reason)),
                     ("steps", .array(s.steps.map(JSON.string)))])
        })
    }

    static func dmarcJSON(_ v: DMARCVerdict) -> [(String, JSON)] {
        [("result", .string(v.result.rawValue)), ("from_domain", .string(v.fromDomain)), ("policy_domain", v.policyDomain.map(JSON.string) ?? .null),
         ("policy", v.record.map { .string($0.policy.rawValue) } ?? .null),
         ("subdomain_policy", v.record?.subdomainPolicy.map { .string($0.rawValue) } ?? .null),
         ("pct", v.record.map { .int($0.percent) } ?? .null), ("disposition", .string(v.disposition.rawValue)),
         ("spf_aligned", .bool(v.spfAligned)), ("dkim_aligned", .bool(v.dkimAligned)), ("reason", .string(v.reason)),
         ("steps", .array(v.steps.map(JSON.string)))]
    }

    static func dmarcText(_ v: DMARCVerdict) -> String {
        var out = "DMARC (header.from \(v.fromDomain)): \(v.result.rawValue)\n  \(v.reason)\n"
        if let r = v.record, r.percent < 100, v.result == .fail { out += "  pct=\(r.percent): the policy applies to \(r.percent) % of such mail, the next lower one to the rest\n" }
        if let r = v.record, let at = v.policyDomain {
            out += "  policy at _dmarc.\(at): p=\(r.policy.rawValue)" + (r.subdomainPolicy.map { " sp=\($0.rawValue)" } ?? "")
                + " pct=\(r.percent) adkim=\(r.strictDKIM ? "s" : "r") aspf=\(r.strictSPF ? "s" : "r"); disposition \(v.disposition.rawValue)\n"
        }
        for s in v.steps { out += "  dns: \(s)\n" }
        return out
    }
}

extension AuthCommand {
    struct SPF: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "SPF (RFC 7208) for a client address, MAIL FROM and HELO.",
            discussion: "The result is the MAIL FROM identity's (the HELO identity's when --mail-from is empty); the HELO identity is checked too and shown beside it.")

        @OptionGroup var options: Options
        @Option(help: "The client's IP address.") var ip: String
        @Option(name: .customLong("mail-from"), help: "The MAIL FROM address (empty: the null reverse-path).") var mailFrom: String = ""
        @Option(help: "The HELO/EHLO name.") var helo: String

        func run() async throws {
            bootstrapLogging(level: "warning")
            guard let address = IPAddress(ip) else { throw fail("--ip \(ip) is not an IPv4 or IPv6 address", code: 64) }
            let settings: TernSettings
            do { settings = try options.settings() } catch { throw fail("\(error)", code: 78) }
            let (resolver, dns) = try options.dns(settings)
            defer { resolver.shutdown() }
            let checker = SPFChecker(dns: dns, receiver: settings.effectiveAuthservID, clock: { nowMillis() })
            let verdict = await checker.check(ip: address, mailFrom: mailFrom, helo: helo)
            let heloVerdict = mailFrom.isEmpty ? verdict : await checker.checkHelo(ip: address, helo: helo)
            switch options.format {
            case .json:
                guard case .object(var fields) = AuthCommand.spfJSON(verdict) else { return }
                fields.append(("helo", AuthCommand.spfJSON(heloVerdict)))
                print(JSON.object(fields).text)
            case .text:
                print(AuthCommand.spfText(verdict), terminator: "")
                if !mailFrom.isEmpty { print(AuthCommand.spfText(heloVerdict), terminator: "") }
            }
        }
    }

    struct DKIMVerify: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "dkim-verify", abstract: "Verify every DKIM signature of a message (RFC 6376).",
            discussion: "The result is pass when a signature passed, else the first signature's result, none without signatures.")

        @OptionGroup var options: Options
        @Argument(help: ArgumentHelp("The message (RFC 5322, CRLF or LF line ends); - for standard input.", valueName: "FILE"))
        var file: String

        func run() async throws {
            bootstrapLogging(level: "warning")
            let message = try readMessage(file)
            let settings: TernSettings
            do { settings = try options.settings() } catch { throw fail("\(error)", code: 78) }
            let (resolver, dns) = try options.dns(settings)
            defer { resolver.shutdown() }
            let sigs = await DKIMVerifier(dns: dns, clock: { nowMillis() }).verify(message)
            let summary = sigs.contains { $0.result == .pass } ? DKIMResult.pass : sigs.first?.result ?? DKIMResult.none
            switch options.format {
            case .json:
                print(JSON.object([("result", .string(summary.rawValue)), ("signatures", AuthCommand.dkimJSON(sigs))]).text)
            case .text:
                print("DKIM: \(summary.rawValue) (\(sigs.count) signature\(sigs.count == 1 ? "" : "s"))")
                for s in sigs {
                    print("  \(s.result.rawValue): d=\(s.domain) s=\(s.selector) a=\(s.algorithm)" + (s.reason.isEmpty ? "" : " — \(s.reason)"))
                    for step in s.steps { print("    dns: \(step)") }
                }
            }
        }
    }

    struct DMARC: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "DMARC (RFC 7489): a domain's policy, or the verdict for a message.",
            discussion: """
                With --domain: the policy discovery for it (the domain, then its organisational domain from the Public Suffix List) and \
                the verdict for mail from it that neither SPF nor DKIM authenticates (none without a policy, else fail and the disposition). \
                With --file (and --ip, --mail-from, --helo): SPF, DKIM and DMARC for that message, as intake runs them.
                """)

        @OptionGroup var options: Options
        @Option(help: "The RFC 5322.From domain.") var domain: String?
        @Option(help: ArgumentHelp("A message to check as intake would; - for standard input.", valueName: "FILE")) var file: String?
        @Option(help: "With --file: the client's IP address (SPF).") var ip: String?
        @Option(name: .customLong("mail-from"), help: "With --file: the MAIL FROM address.") var mailFrom: String = ""
        @Option(help: "With --file: the HELO name.") var helo: String = ""

        func run() async throws {
            bootstrapLogging(level: "warning")
            guard (domain == nil) != (file == nil) else { throw fail("give --domain or --file", code: 64) }
            let settings: TernSettings
            do { settings = try options.settings() } catch { throw fail("\(error)", code: 78) }
            let resolver = try settings.resolver(overriding: options.resolver)
            defer { resolver.shutdown() }
            let verifier: MailVerifier
            do { verifier = try settings.verifier(dns: resolver) } catch { throw fail("\(error)", code: 78) }
            if let domain {
                // Every message is taken as selected by pct=: the output says what the policy asks, not a draw.
                let checker = DMARCChecker(dns: verifier.dmarc.dns, psl: verifier.dmarc.psl, percentile: { 0 })
                let verdict = await checker.check(fromDomains: [domain.lowercased()], spf: nil, dkim: [])
                let org = verifier.dmarc.psl.organizationalDomain(domain)
                switch options.format {
                case .json:
                    print(JSON.object(AuthCommand.dmarcJSON(verdict) + [("organizational_domain", .string(org))]).text)
                case .text:
                    print("organisational domain: \(org)")
                    print(AuthCommand.dmarcText(verdict), terminator: "")
                }
                return
            }
            let message = try readMessage(file!)
            guard let ipText = ip, let address = IPAddress(ipText) else { throw fail("--file needs --ip with the client's address", code: 64) }
            let report = await verifier.verify(ip: address, mailFrom: mailFrom, helo: helo, message: message)
            switch options.format {
            case .json:
                print(JSON.object(AuthCommand.dmarcJSON(report.dmarc) + [
                    ("spf", AuthCommand.spfJSON(report.spf)), ("dkim", AuthCommand.dkimJSON(report.dkim)),
                    ("authentication_results", .string(report.header)),
                ]).text)
            case .text:
                print(AuthCommand.dmarcText(report.dmarc), terminator: "")
                print(AuthCommand.spfText(report.spf), terminator: "")
                print("Authentication-Results: \(report.header)")
            }
        }
    }
}

/// A message file (or standard input), LF line ends made CRLF as SMTP would carry them.
func readMessage(_ path: String) throws -> [UInt8] {
    let data = path == "-" ? FileHandle.standardInput.readDataToEndOfFile() : FileManager.default.contents(atPath: path)
    guard let data else { throw fail("cannot read \(path)", code: 66) }
    var out: [UInt8] = []
    out.reserveCapacity(data.count + data.count / 40)
    var previous: UInt8 = 0
    for b in data {
        if b == 10 && previous != 13 { out.append(13) }
        out.append(b)
        previous = b
    }
    return out
}
