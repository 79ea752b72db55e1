// `tern tls self-signed`: a key and certificate for trying STARTTLS and the
// submission listeners out. Clients will not trust it; use a certificate from
// a CA (for example through ACME) in production.

import ArgumentParser
import Crypto
import Foundation
import X509

struct TLS: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tls", abstract: "TLS helpers.", subcommands: [SelfSigned.self])

    struct SelfSigned: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "self-signed",
            abstract: "Write a new ECDSA P-256 key and a self-signed certificate for HOST (for testing).",
            discussion: "Then: tern serve --tls-cert CERT --tls-key KEY. The key file is created readable by its owner only.")

        @Option(help: ArgumentHelp("DNS name in the certificate (subject CN and subjectAltName).", valueName: "NAME"))
        var host: String

        @Option(help: ArgumentHelp("Certificate file to write (PEM).", valueName: "FILE"))
        var cert = "./tern-data/tls/cert.pem"

        @Option(help: ArgumentHelp("Key file to write (PEM, PKCS #8).", valueName: "FILE"))
        var key = "./tern-data/tls/key.pem"

        @Option(help: "Days the certificate is valid.")
        var days = 365

        @Flag(help: "Replace existing files.")
        var force = false

        func run() throws {
            guard days >= 1 && days <= 3650 else { throw fail("--days must be 1-3650", code: 64) }
            guard !host.isEmpty, host.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "." || $0 == "-" || $0 == "*" }) else {
                throw fail("bad host name '\(host)'", code: 64)
            }
            for path in [cert, key] where !force && FileManager.default.fileExists(atPath: path) {
                throw fail("\(path) exists (use --force to replace it)", code: 73) // EX_CANTCREAT
            }
            let (certPEM, keyPEM): (String, String)
            do {
                (certPEM, keyPEM) = try SelfSigned.make(host: host, days: days)
            } catch {
                throw fail("cannot make the certificate: \(error)", code: 70)
            }
            do {
                try write(keyPEM, to: key, mode: 0o600)
                try write(certPEM, to: cert, mode: 0o644)
            } catch {
                throw fail("\(error)", code: 73)
            }
            print("wrote \(cert) and \(key) for \(host), valid \(days) days")
            print("run: tern serve --tls-cert \(cert) --tls-key \(key)")
        }

        /// The certificate and key, PEM.
        static func make(host: String, days: Int, now: Date = Date()) throws -> (cert: String, key: String) {
            let signingKey = P256.Signing.PrivateKey()
            let key = Certificate.PrivateKey(signingKey)
            let name = try DistinguishedName { CommonName(host) }
            let extensions = try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true))
                try ExtendedKeyUsage([.serverAuth])
                SubjectAlternativeNames([.dnsName(host)])
            }
            let certificate = try Certificate(
                version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: key.publicKey,
                notValidBefore: now.addingTimeInterval(-300), notValidAfter: now.addingTimeInterval(Double(days) * 86_400),
                issuer: name, subject: name, signatureAlgorithm: .ecdsaWithSHA256, extensions: extensions, issuerPrivateKey: key)
            return (try certificate.serializeAsPEM().pemString + "\n", signingKey.pemRepresentation + "\n")
        }

        private func write(_ text: String, to path: String, mode: Int) throws {
            let url = URL(fileURLWithPath: path)
            try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            _ = FileManager.default.createFile(atPath: path, contents: nil, attributes: [.posixPermissions: mode])
            try FileManager.default.setAttributes([.posixPermissions: mode], ofItemAtPath: path)
            try Data(text.utf8).write(to: url)
        }
    }
}
