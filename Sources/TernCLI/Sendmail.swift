// `tern sendmail`: the sendmail-compatible local submission path. Reads a
// message on stdin and hands it to intake (origin `local`); exits 0 only once
// the message is committed. Exit codes follow sysexits.h as sendmail's do.

import ArgumentParser
import Foundation
import NIOCore
import TernDKIM
import TernIntake
import TernMessage
import TernProtocol
import TernStore

struct Sendmail: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Queue a message read from standard input (a sendmail-compatible subset).",
        discussion: """
            Recipients come from the arguments, and with -t also from the To:, Cc: and Bcc: headers \
            (Bcc: is removed). A line holding a single dot ends the message unless -i or -oi is given. \
            Exit status 0 means the message is committed to the queue; 75 (EX_TEMPFAIL) means try again.
            """)

    @Option(name: .customShort("f"), help: ArgumentHelp("Envelope sender (default $USER@hostname; <> for the null sender).", valueName: "SENDER"))
    var sender: String?

    @Flag(name: .customShort("t"), help: "Also read recipients from the To:, Cc: and Bcc: headers.")
    var readHeaders = false

    @Flag(name: .customShort("i"), help: "A line with a single dot does not end the message.")
    var ignoreDots = false

    @Flag(name: .customLong("oi", withSingleDash: true), help: "Same as -i.")
    var ignoreDotsOI = false

    @OptionGroup var common: DatabaseOptions

    @Argument(help: "Recipient addresses.")
    var recipients: [String] = []

    func run() async throws {
        bootstrapLogging(level: "warning") // stderr; stdout stays clean for callers
        let settings = try common.settings()
        let input = FileHandle.standardInput.readDataToEndOfFile()
        let prepared = SendmailInput.prepare(Array(input), stopAtDot: !(ignoreDots || ignoreDotsOI), readHeaders: readHeaders)

        var addresses = recipients
        addresses += prepared.headerRecipients
        guard !addresses.isEmpty else { throw fail("no recipients given (name them, or use -t)", code: 64) } // EX_USAGE
        var envelopeRecipients: [EnvelopeRecipient] = []
        for a in addresses {
            let trimmed = a.hasPrefix("<") && a.hasSuffix(">") ? String(a.dropFirst().dropLast()) : a
            guard case .success(let m) = AddressParser.parseMailbox(Substring(trimmed), allowUTF8: true) else {
                throw fail("bad recipient address '\(a)'", code: 65) // EX_DATAERR
            }
            if !envelopeRecipients.contains(where: { $0.mailbox == m }) {
                envelopeRecipients.append(EnvelopeRecipient(mailbox: m, notify: nil, orcpt: nil))
            }
        }
        var from: Mailbox? = nil
        let senderText = sender ?? "\(ProcessInfo.processInfo.environment["USER"] ?? "root")@\(settings.hostname)"
        if senderText != "<>" && senderText != "" {
            let s = senderText.hasPrefix("<") && senderText.hasSuffix(">") ? String(senderText.dropFirst().dropLast()) : senderText
            guard case .success(let m) = AddressParser.parseMailbox(Substring(s), allowUTF8: true) else {
                throw fail("bad sender address '\(senderText)'", code: 65)
            }
            from = m
        }
        if prepared.body.count > settings.maxMessageSize {
            throw fail("message of \(prepared.body.count) bytes exceeds the limit of \(settings.maxMessageSize)", code: 65)
        }
        var params = MailParameters()
        params.smtputf8 = (from?.needsSMTPUTF8 ?? false) || envelopeRecipients.contains { $0.mailbox.needsSMTPUTF8 }
        if prepared.body.contains(where: { $0 >= 0x80 }) { params.body = .eightBitMIME }
        let envelope = Envelope(clientAddress: "", helo: "", protocolName: "local", mailFrom: from,
                                parameters: params, recipients: envelopeRecipients)
        // Never a new, orphaned queue: the database must be the one `serve` made.
        guard FileManager.default.fileExists(atPath: settings.db) else {
            throw fail("no queue at \(settings.db) (is `tern serve` set up? give --db, TERN_DB or --config as it has)", code: 75)
        }
        let store: Store
        do { store = try Store(path: settings.db) } catch { throw fail("cannot open queue \(settings.db): \(error)", code: 75) }
        defer { store.close() }
        let signer: DKIMSigner?
        do { signer = try settings.dkimSigner() } catch { throw fail("\(error)", code: 78) }
        let intake = Intake(store: store, hostname: settings.hostname, signer: signer)
        var body = ByteBuffer()
        body.writeBytes(prepared.body)
        switch await intake.accept(envelope, body: body, origin: .local) {
        case .accepted(let queueID):
            FileHandle.standardError.write(Data("tern: queued as \(queueID)\n".utf8))
        case .rejected(let reply):
            throw fail("not queued: \(reply)", code: 75) // EX_TEMPFAIL
        }
    }
}

/// Pure part of sendmail: line endings, the lone dot, -t recipients, Bcc removal.
public enum SendmailInput {
    public struct Prepared: Equatable {
        public var body: [UInt8]
        public var headerRecipients: [String]
    }

    public static func prepare(_ input: [UInt8], stopAtDot: Bool, readHeaders: Bool) -> Prepared {
        // Normalise to CRLF line ends; a final line without LF gets one.
        var lines: [ArraySlice<UInt8>] = input.split(separator: 10, omittingEmptySubsequences: false)
        if lines.last?.isEmpty == true { lines.removeLast() }
        var out: [UInt8] = []
        out.reserveCapacity(input.count + lines.count)
        var inHeaders = true
        var droppingBcc = false
        var headerBytes: [UInt8] = []
        for var line in lines {
            if line.last == 13 { line = line.dropLast() }
            if stopAtDot && line.count == 1 && line.first == UInt8(ascii: ".") { break }
            if inHeaders {
                if line.isEmpty {
                    inHeaders = false
                } else if line.first == 32 || line.first == 9 {
                    if droppingBcc { headerBytes += line + [13, 10]; continue }
                } else {
                    droppingBcc = readHeaders && line.count >= 4 && String(decoding: line.prefix(4), as: UTF8.self).lowercased() == "bcc:"
                    if droppingBcc { headerBytes += line + [13, 10]; continue }
                }
                headerBytes += line + [13, 10]
            }
            out += line
            out += [13, 10]
        }
        var recipients: [String] = []
        if readHeaders {
            let block = HeaderBlock(headerBytes + [13, 10])
            for name in ["To", "Cc", "Bcc"] {
                for value in block.all(name) { recipients += addressList(value) }
            }
        }
        return Prepared(body: out, headerRecipients: recipients)
    }

    /// The addr-specs of an RFC 5322 address list (display names, groups and comments dropped).
    public static func addressList(_ value: String) -> [String] {
        var items: [String] = []
        var current = ""
        var depthAngle = 0, depthParen = 0
        var quoted = false
        for ch in value {
            if quoted { current.append(ch); if ch == "\"" { quoted = false }; continue }
            switch ch {
            case "\"": quoted = true; current.append(ch)
            case "(": depthParen += 1
            case ")": depthParen = max(0, depthParen - 1)
            case _ where depthParen > 0: continue
            case "<": depthAngle += 1; current.append(ch)
            case ">": depthAngle = max(0, depthAngle - 1); current.append(ch)
            case "," where depthAngle == 0, ";" where depthAngle == 0: items.append(current); current = ""
            case ":" where depthAngle == 0: current = "" // group name
            default: current.append(ch)
            }
        }
        items.append(current)
        return items.compactMap { item in
            if let open = item.firstIndex(of: "<"), let close = item[open...].firstIndex(of: ">") {
                let a = String(item[item.index(after: open)..<close]).trimmingCharacters(in: .whitespaces)
                return a.isEmpty ? nil : a
            }
            let a = item.trimmingCharacters(in: .whitespaces)
            return a.contains("@") ? a : nil
        }
    }
}
