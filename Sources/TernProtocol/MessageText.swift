// The text of one message as DATA or BDAT brings it in (RFC 5321 §4.1.1.4,
// §4.5.2, §2.3.8; RFC 3030; RFC 6152), as a pure machine the server session
// delegates to: dot-unstuffing, the end of data, the line rules (bare CR,
// bare LF, NUL, line length) and the size limit. It keeps reading to the
// end whatever goes wrong and says at the end what the reply is.

import NIOCore
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

struct MessageText: Sendable {
    enum Fault: Sendable, Equatable { case tooBig, lineTooLong, bareNewline, bareCR, nul, noMemory }

    let maxSize: Int
    let maxLine: Int
    let bareNewline: BareNewlinePolicy

    /// The text kept so far (emptied once a fault means it will be refused).
    private(set) var body = ByteBuffer()
    /// Octets counted against the size limit, kept or not.
    private(set) var size = 0
    /// The first fault, which decides the reply at the end.
    private(set) var fault: Fault? = nil
    /// The raw stream's last line ended in CRLF: a "." line now ends DATA.
    private var previousLineEndedCRLF: Bool
    /// A BDAT piece ended in CR: the next must start with LF.
    private var chunkEndedInCR = false

    /// After DATA's 354. RFC 5321 §4.1.1.4: the CRLF that ends the DATA
    /// command is the first of <CRLF>.<CRLF> for an empty message; a bare
    /// LF is not (found by the session fuzz target: "DATA<LF>.<CRLF>").
    init(data config: SessionConfig, commandEnding: LineEnding) {
        maxSize = config.maxMessageSize
        maxLine = config.maxTextLine
        bareNewline = config.bareNewline
        previousLineEndedCRLF = commandEnding == .crlf
        body = config.textAllocator.buffer(capacity: 16 * 1024)
    }

    /// At the first BDAT of a transaction.
    init(chunks config: SessionConfig) {
        maxSize = config.maxMessageSize
        maxLine = config.maxTextLine
        bareNewline = config.bareNewline
        previousLineEndedCRLF = true
        body = config.textAllocator.buffer(capacity: 0)
    }

    // MARK: - DATA

    /// One DATA line that came alone; true when it ends the data.
    mutating func line(_ line: ByteBuffer, _ ending: LineEnding) -> Bool {
        var line = line
        let isDot = line.readableBytes == 1 && line.getInteger(at: line.readerIndex, as: UInt8.self) == UInt8(ascii: ".")
        // RFC 5321 §4.1.1.4: the end is <CRLF>.<CRLF> and nothing else, so a
        // <LF>.<CRLF> or <CRLF>.<LF> cannot end the message (SMTP smuggling).
        if isDot && ending == .crlf && previousLineEndedCRLF { return true }
        let (hasCR, hasNUL) = line.withUnsafeReadableBytes { ($0.contains(13), $0.containsNUL) }
        // RFC 5321 §2.3.8: a bare CR is refused whatever the policy; a bare
        // LF is refused or, by default, stored as CRLF (see BareNewlinePolicy).
        if hasCR { note(.bareCR) }
        if ending == .bareLF && bareNewline == .reject { note(.bareNewline) }
        // RFC 6152 §3: 8-bit data excludes NUL.
        if hasNUL { note(.nul) }
        previousLineEndedCRLF = ending == .crlf
        if line.readableBytes > 0, line.getInteger(at: line.readerIndex, as: UInt8.self) == UInt8(ascii: ".") {
            line.moveReaderIndex(forwardBy: 1) // RFC 5321 §4.5.2 transparency
        }
        append(&line, lineEnd: true)
        return false
    }

    /// Whole CRLF lines, none starting with "." (see SMTPFrame.text).
    mutating func run(_ run: ByteBuffer) {
        var run = run
        previousLineEndedCRLF = true
        if run.withUnsafeReadableBytes({ $0.containsNUL }) { note(.nul) }
        append(&run, lineEnd: false)
    }

    /// A line over the limit, discarded by the framer.
    mutating func overlongLine(length: Int, ending: LineEnding) {
        size += length
        note(size > maxSize ? .tooBig : .lineTooLong)
        body = ByteBuffer()
        // RFC 5321 §4.1.1.4: only <CRLF>.<CRLF> ends DATA, so a "." after
        // an overlong line that ended in a bare LF is text (SMTP smuggling).
        previousLineEndedCRLF = ending == .crlf
    }

    /// Adds DATA text, and its CRLF when `lineEnd`; past the size limit the
    /// body is dropped and the rest only counted.
    private mutating func append(_ text: inout ByteBuffer, lineEnd: Bool) {
        size += text.readableBytes + (lineEnd ? 2 : 0)
        if size > maxSize {
            note(.tooBig)
            body = ByteBuffer() // keep reading to the end, store nothing
        } else if fault == nil {
            body.writeBuffer(&text)
            if lineEnd { body.writeStaticString("\r\n") }
        }
    }

    // MARK: - BDAT

    /// A chunk of `count` octets is coming; false when it takes the message past the limit.
    mutating func announce(chunk count: Int) -> Bool {
        size += count
        if size > maxSize {
            fault = .tooBig
            return false
        }
        body.reserveCapacity(size)
        return true
    }

    /// A piece of a chunk, under DATA's line rules: a bare CR and NUL are
    /// refused, a bare LF is refused or becomes CRLF. A CR at the end of a
    /// piece is judged by the first byte of the next.
    mutating func chunk(_ piece: ByteBuffer) {
        guard fault == nil else { return }
        let afterCR = chunkEndedInCR
        let scan = piece.withUnsafeReadableBytes { $0.scanLineEnds(afterCR: afterCR) }
        if scan.bareCR { note(.bareCR) }
        if scan.nul { note(.nul) }
        if scan.bareLF > 0 && bareNewline == .reject { note(.bareNewline) }
        guard fault == nil else { body = ByteBuffer(); return }
        chunkEndedInCR = scan.endsInCR
        if scan.bareLF == 0 {
            var p = piece
            body.writeBuffer(&p)
            return
        }
        size += scan.bareLF
        if size > maxSize { note(.tooBig); body = ByteBuffer(); return }
        piece.withUnsafeReadableBytes { raw in
            var start = 0
            for (i, byte) in raw.enumerated() where byte == 10 {
                let before: UInt8 = i > 0 ? raw[i - 1] : (afterCR ? 13 : 0)
                if before != 13 {
                    body.writeBytes(UnsafeRawBufferPointer(rebasing: raw[start..<i]))
                    body.writeStaticString("\r")
                    start = i
                }
            }
            body.writeBytes(UnsafeRawBufferPointer(rebasing: raw[start...]))
        }
    }

    /// The last chunk is in: a CR at its very end is bare.
    mutating func lastChunkEnded() {
        if chunkEndedInCR { note(.bareCR) }
    }

    // MARK: - Faults and the end

    /// The listener's memory budget ran out: drop the text, refuse with 452 at the end.
    mutating func dropForMemory() {
        note(.noMemory)
        body = ByteBuffer()
    }

    /// Records a fault; the first one is the reply, except that "too big"
    /// says more than "line too long".
    private mutating func note(_ f: Fault) {
        if fault == nil || (f == .tooBig && fault == .lineTooLong) { fault = f }
    }

    /// RFC 5321 §4.5.3.1.10 / RFC 3463 4.3.1: a temporary refusal the client retries.
    static let noMemory = SMTPReply(452, .mailSystemFull, "Error: insufficient system resources for message text, try again later")

    /// The reply that refuses the message, when a fault was seen.
    var refusal: SMTPReply? {
        switch fault {
        case nil: return nil
        case .tooBig: return SMTPReply(552, .messageTooBig, "Message size exceeds fixed maximum message size")
        case .lineTooLong: return SMTPReply(500, .syntaxError, "Error: message text line longer than \(maxLine) octets")
        case .bareNewline: return SMTPReply(550, .syntaxError, "Error: bare <LF> in message text (RFC 5321 §2.3.8); message refused")
        case .bareCR: return SMTPReply(550, .syntaxError, "Error: bare <CR> in message text (RFC 5321 §2.3.8); message refused")
        case .nul: return SMTPReply(550, .contentError, "Error: NUL character in message text (RFC 6152 §3); message refused")
        case .noMemory: return MessageText.noMemory
        }
    }
}

/// What one BDAT piece holds in the way of line ends.
struct LineEndScan {
    /// LFs with no CR before them.
    var bareLF = 0
    /// A CR followed by anything but LF.
    var bareCR = false
    var nul = false
    /// The last byte is a CR (judged by the next piece).
    var endsInCR = false
}

extension UnsafeRawBufferPointer {
    var containsNUL: Bool {
        guard let base = baseAddress, count > 0 else { return false }
        return memchr(base, 0, count) != nil
    }

    /// Scans BDAT text for bare CR, bare LF and NUL; `afterCR` when the
    /// piece before ended in CR.
    func scanLineEnds(afterCR: Bool) -> LineEndScan {
        var scan = LineEndScan()
        var previous: UInt8 = afterCR ? 13 : 0
        for byte in self {
            if previous == 13 && byte != 10 { scan.bareCR = true }
            if byte == 10 && previous != 13 { scan.bareLF += 1 }
            if byte == 0 { scan.nul = true }
            previous = byte
        }
        scan.endsInCR = previous == 13
        return scan
    }
}
