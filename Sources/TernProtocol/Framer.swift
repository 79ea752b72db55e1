// Splits the inbound byte stream into SMTP frames: command lines, DATA text
// lines and BDAT chunk payloads. Pure (no Channel); the listener feeds it the
// bytes it has read and asks for one frame at a time, so a mode change made
// by the session (DATA accepted) applies to the very next frame even when the
// client pipelined. Tested over every split point.

import NIOCore
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

public enum LineEnding: Sendable, Equatable {
    case crlf
    /// An LF not preceded by CR: never a valid line end inside DATA (RFC 5321 §2.3.8).
    case bareLF
}

public enum SMTPFrame: Sendable, Equatable {
    /// A line without its terminator.
    case line(ByteBuffer, LineEnding)
    /// A line longer than the limit; its `length` bytes up to and including
    /// the LF were discarded. `ending` says whether a CR stood before that LF:
    /// the session needs it to know whether a following "." line can end
    /// DATA (an overlong line ending in a bare LF followed by ".<CRLF>" is
    /// the SMTP smuggling pattern, RFC 5321 §4.1.1.4).
    case overlongLine(length: Int, ending: LineEnding)
    /// A piece of a BDAT chunk; `isEnd` when the chunk's declared size is complete.
    case chunk(ByteBuffer, isEnd: Bool)
    /// DATA mode only: a run of one or more whole lines, CRLFs included, that
    /// need nothing but copying: each ends in CRLF, holds no other CR, does
    /// not start with "." and is within the text line limit. Any other line
    /// comes alone as `.line` (or `.overlongLine`), so the session still sees
    /// every dot, bare newline and long line as before.
    case text(ByteBuffer)
}

public struct SMTPFramer: Sendable {
    public enum Mode: Sendable, Equatable { case command, data }

    public var mode: Mode = .command
    /// Longest command line accepted by the framer, terminator included.
    public var commandLineLimit: Int
    /// Longest text line inside DATA, terminator included (RFC 5321 §4.5.3.1.6).
    public var textLineLimit: Int

    /// Whether DATA text comes as `.text` runs (the default) or line by line;
    /// the tests compare the two.
    public var textRuns = true

    private var chunkRemaining: Int? = nil
    private var discarding = false
    private var discarded = 0
    /// The last byte discarded so far, to tell CRLF from LF when the LF
    /// arrives at the start of a later read.
    private var lastDiscarded: UInt8 = 0

    public init(commandLineLimit: Int = 512 + SMTPFramer.extensionAllowance, textLineLimit: Int = 1000) {
        self.commandLineLimit = commandLineLimit
        self.textLineLimit = textLineLimit
    }

    /// Room that ESMTP parameters add to MAIL (SIZE 26, ENVID 100, AUTH 500).
    public static let extensionAllowance = 626

    /// True while the framer is reading a BDAT payload.
    public var inChunk: Bool { chunkRemaining != nil }

    /// The next complete frame, consuming its bytes; nil when more input is needed.
    public mutating func next(_ buffer: inout ByteBuffer) -> SMTPFrame? {
        if let remaining = chunkRemaining {
            if remaining == 0 {
                chunkRemaining = nil
                return .chunk(ByteBuffer(), isEnd: true)
            }
            guard buffer.readableBytes > 0 else { return nil }
            let take = min(remaining, buffer.readableBytes)
            let piece = buffer.readSlice(length: take)!
            let left = remaining - take
            chunkRemaining = left == 0 ? nil : left
            return .chunk(piece, isEnd: left == 0)
        }
        let limit = mode == .command ? commandLineLimit : textLineLimit
        if mode == .data && textRuns && !discarding {
            // One frame for many lines: a 4 KiB message is some 60 lines, and
            // a slice, a frame and a pass through the session for each cost
            // more than the copy itself.
            let run = buffer.withUnsafeReadableBytes { $0.plainTextRun(lineLimit: limit) }
            if run > 0 { return .text(buffer.readSlice(length: run)!) }
        }
        let lf = buffer.withUnsafeReadableBytes { $0.firstLineFeed() }
        if discarding {
            guard let i = lf else {
                discard(&buffer, buffer.readableBytes)
                return nil
            }
            let before = i > 0 ? buffer.getInteger(at: buffer.readerIndex + i - 1, as: UInt8.self)! : lastDiscarded
            buffer.moveReaderIndex(forwardBy: i + 1)
            discarding = false
            return .overlongLine(length: discarded + i + 1, ending: before == 13 ? .crlf : .bareLF)
        }
        guard let i = lf else {
            if buffer.readableBytes > limit {
                discarded = 0
                discard(&buffer, buffer.readableBytes)
                discarding = true
            }
            return nil
        }
        if i + 1 > limit {
            let before = i > 0 ? buffer.getInteger(at: buffer.readerIndex + i - 1, as: UInt8.self)! : 0
            buffer.moveReaderIndex(forwardBy: i + 1)
            return .overlongLine(length: i + 1, ending: before == 13 ? .crlf : .bareLF)
        }
        var line = buffer.readSlice(length: i + 1)!
        line.moveWriterIndex(to: line.writerIndex - 1) // drop LF
        var ending = LineEnding.bareLF
        if line.readableBytes > 0, line.getInteger(at: line.writerIndex - 1, as: UInt8.self) == 13 {
            line.moveWriterIndex(to: line.writerIndex - 1)
            ending = .crlf
        }
        if mode == .command, let size = SMTPFramer.bdatSize(line) {
            // RFC 3030 §2: the chunk follows the command and is read whatever the
            // reply to the command will be.
            chunkRemaining = size
        }
        return .line(line, ending)
    }

    private mutating func discard(_ buffer: inout ByteBuffer, _ count: Int) {
        guard count > 0 else { return }
        lastDiscarded = buffer.getInteger(at: buffer.readerIndex + count - 1, as: UInt8.self)!
        discarded += count
        buffer.moveReaderIndex(forwardBy: count)
    }

    /// The size of a syntactically valid `BDAT n [LAST]` line.
    static func bdatSize(_ line: ByteBuffer) -> Int? {
        guard line.readableBytes >= 6,
              let head = line.getString(at: line.readerIndex, length: 5), head.uppercased() == "BDAT " else { return nil }
        guard let text = line.getString(at: line.readerIndex, length: line.readableBytes),
              case .success(.bdat(let size, _)) = CommandParser.parse(Substring(text)) else { return nil }
        return size
    }
}

extension UnsafeRawBufferPointer {
    /// The length of the longest prefix made of whole lines that DATA can
    /// copy as they are (see `SMTPFrame.text`); 0 when the first line is
    /// incomplete or needs a look of its own.
    func plainTextRun(lineLimit: Int) -> Int {
        guard let base = baseAddress else { return 0 }
        var start = 0
        while start < count, base.load(fromByteOffset: start, as: UInt8.self) != UInt8(ascii: ".") {
            guard let lf = firstLineFeed(from: start), lf + 1 - start <= lineLimit,
                  lf > start, base.load(fromByteOffset: lf - 1, as: UInt8.self) == 13,
                  memchr(base + start, 13, lf - 1 - start) == nil else { break }
            start = lf + 1
        }
        return start
    }

    /// The index of the first LF at or after `start`, by libc's memchr
    /// rather than a Swift loop over every byte (the DATA framer and
    /// dot-stuffing scan every line of every message).
    func firstLineFeed(from start: Int = 0) -> Int? {
        guard let base = baseAddress, start < count else { return nil }
        return memchr(base + start, 10, count - start).map { base.distance(to: UnsafeRawPointer($0)) }
    }
}
