// `tern dkim keygen`: a DKIM signing key (Ed25519 or RSA) written with mode
// 0600, never over an existing file, and the DNS TXT record to publish for it.

import ArgumentParser
import Foundation
import TernDKIM

struct DKIMCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dkim", abstract: "DKIM signing keys.", subcommands: [Keygen.self])

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

extension String {
    func chunked(_ n: Int) -> [String] {
        var out: [String] = []
        var rest = Substring(self)
        while !rest.isEmpty {
            out.append(String(rest.prefix(n)))
            rest = rest.dropFirst(n)
        }
        return out
    }
}
