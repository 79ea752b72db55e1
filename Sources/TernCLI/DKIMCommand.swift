// `tern dkim keygen`: a DKIM signing key (Ed25519 or RSA) written with mode
// 0600, never over an existing file, and the DNS TXT record to publish for it.

import ArgumentParser
import Foundation
import TernDKIM
import TernMailAuth
import TernRouting

struct DKIMCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dkim", abstract: "DKIM signing keys.", subcommands: [Keygen.self, Check.self])

    struct Keygen: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write a new DKIM private key (mode 0600; refuses to overwrite) and print the TXT record to publish.")

        @Option(help: "The signing domain (d=).") var domain: String
        @Option(help: "The selector (s=).") var selector: String
        @Option(help: "ed25519 or rsa.") var algorithm: DKIMPrivateKey.Algorithm = .rsa
        @Option(help: "RSA key size (at least 2048).") var bits: Int = 2048
        @Option(name: .customLong("key-file"), help: ArgumentHelp("Where to write the key (default SELECTOR._domainkey.DOMAIN.pem here).", valueName: "FILE"))
        var keyFile: String?

        func run() throws {
            let domain = self.domain.lowercased()
            guard !domain.isEmpty, !selector.isEmpty, !domain.contains(" "), !selector.contains(" ") else {
                throw fail("--domain and --selector must be non-empty names", code: 64)
            }
            let path = keyFile ?? "\(selector)._domainkey.\(domain).pem"
            let key: DKIMPrivateKey
            do { key = try DKIMPrivateKey.generate(algorithm, bits: bits) } catch { throw fail("\(error)", code: 64) }
            // O_EXCL: never over an existing key (a published record may depend on it).
            let fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0o600)
            guard fd >= 0 else {
                throw fail(errno == EEXIST ? "\(path) exists; not overwritten" : "cannot create \(path): \(String(cString: strerror(errno)))", code: 73)
            }
            let pem = Array(key.pem.utf8)
            let written = pem.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            close(fd)
            guard written == pem.count else { throw fail("cannot write \(path)", code: 74) }
            print("wrote \(path) (\(algorithm == .rsa ? "RSA \(bits)" : "Ed25519"), mode 0600)")
            print("publish this TXT record:")
            let strings = key.dnsRecord.chunked(250).map { "\"\($0)\"" }.joined(separator: " ")
            print("\(selector)._domainkey.\(domain). IN TXT ( \(strings) )")
            print("and add to the configuration:")
            print("[[dkim]]\ndomain = \"\(domain)\"\nselector = \"\(selector)\"\nkey_file = \"\(URL(fileURLWithPath: path).standardizedFileURL.path)\"")
        }
    }
}

extension DKIMPrivateKey.Algorithm: ExpressibleByArgument {}

extension DKIMCommand {
    struct Check: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Look up SELECTOR._domainkey.DOMAIN (through the configured resolver) and say whether it matches the key.",
            discussion: "The key is the [[dkim]] entry of the configuration for DOMAIN and SELECTOR, or --key-file. Exit 0 when the published record matches, 1 when it does not or is missing, 75 when DNS failed.")

        @OptionGroup var common: DatabaseOptions
        @Option(help: "The signing domain (d=).") var domain: String
        @Option(help: "The selector (s=).") var selector: String
        @Option(name: .customLong("key-file"), help: ArgumentHelp("The private key (default: the configuration's [[dkim]] entry).", valueName: "FILE"))
        var keyFile: String?
        @Option(help: ArgumentHelp("DNS server for the look-up; repeatable (default: the configuration's, else the system's).", valueName: "HOST:PORT"))
        var resolver: [String] = []

        func run() async throws {
            bootstrapLogging(level: "warning")
            let settings: TernSettings
            do { settings = try common.settings() } catch { throw fail("\(error)", code: 78) }
            let domain = self.domain.lowercased()
            guard let path = keyFile ?? settings.dkimKeys.first(where: { $0.domain == domain && $0.selector == selector })?.keyFile else {
                throw fail("no [[dkim]] key for \(selector) of \(domain) in the configuration; give --key-file", code: 66)
            }
            guard let data = FileManager.default.contents(atPath: path) else { throw fail("cannot read \(path)", code: 66) }
            let key: DKIMPrivateKey
            do { key = try DKIMPrivateKey(pem: String(decoding: data, as: UTF8.self), source: path) } catch { throw fail("\(error)", code: 65) }
            let dns: CAresResolver
            do { dns = try settings.resolver(overriding: resolver) } catch { throw fail("\(error)", code: 78) }
            defer { dns.shutdown() }
            let name = "\(selector)._domainkey.\(domain)"
            print("looking up TXT \(name)")
            switch await dns.txt(name) {
            case .temporaryFailure(let why):
                throw fail("DNS failed for \(name): \(why)", code: 75)
            case .nxdomain, .noRecords:
                print("no record at \(name); publish:\n\(name). IN TXT ( \(key.dnsRecord.chunked(250).map { "\"\($0)\"" }.joined(separator: " ")) )")
                throw ExitCode(1)
            case .records(let records):
                let dkim = records.filter { $0.replacingOccurrences(of: " ", with: "").hasPrefix("v=DKIM1") || $0.contains("p=") }
                for record in dkim {
                    let tags = DKIMTagList.parse(Array(record.utf8)[...]) ?? [:]
                    let p = (tags["p"] ?? "").filter { !$0.isWhitespace }
                    let k = tags["k"] ?? "rsa"
                    print("found: \(record)")
                    if p.isEmpty { print("the key is revoked (empty p=)"); continue }
                    if p == key.publicKeyBase64 && k == key.algorithm.rawValue {
                        print("match: the record is the public key of \(path) (\(k))")
                        return
                    }
                    print(k != key.algorithm.rawValue ? "mismatch: the record is k=\(k), the key is \(key.algorithm.rawValue)"
                                                       : "mismatch: p= is not the public key of \(path)")
                }
                if dkim.isEmpty { print("no DKIM record among \(records.count) TXT record(s)") }
                print("publish:\n\(name). IN TXT ( \(key.dnsRecord.chunked(250).map { "\"\($0)\"" }.joined(separator: " ")) )")
                throw ExitCode(1)
            }
        }
    }
}
