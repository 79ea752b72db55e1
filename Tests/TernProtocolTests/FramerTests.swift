import NIOCore
import Testing
@testable import TernProtocol

@Suite struct FramerTests {
    func frames(_ input: String, mode: SMTPFramer.Mode = .command, limit: Int = 1138) -> [SMTPFrame] {
        var f = SMTPFramer(commandLineLimit: limit, textLineLimit: 1000)
        f.mode = mode
        var b = ByteBuffer(string: input)
        var out: [SMTPFrame] = []
        while let fr = f.next(&b) { out.append(fr) }
        return out
    }

    func line(_ s: String, _ e: LineEnding = .crlf) -> SMTPFrame { .line(ByteBuffer(string: s), e) }

    @Test func linesAndEndings() {
        #expect(frames("NOOP\r\nQUIT\n") == [line("NOOP"), line("QUIT", .bareLF)])
        #expect(frames("partial") == [])
        #expect(frames("\r\n") == [line("")])
        #expect(frames("a\rb\r\n") == [line("a\rb")]) // the session sees the bare CR
    }

    @Test func overlongLineIsDiscardedThroughItsEnd() {
        let long = String(repeating: "x", count: 2000)
        #expect(frames("\(long)\r\nNOOP\r\n") == [.overlongLine(length: 2002, ending: .crlf), line("NOOP")])
        #expect(frames("\(long)") == [])
        // Split across reads, the discarded length is still whole.
        var f = SMTPFramer()
        var b = ByteBuffer(string: long)
        #expect(f.next(&b) == nil)
        b.writeString("tail\r\n")
        #expect(f.next(&b) == .overlongLine(length: 2006, ending: .crlf))
        // Exactly at the limit (terminator included) is fine; one more is not.
        #expect(frames(String(repeating: "y", count: 8) + "\r\n", limit: 10) == [line(String(repeating: "y", count: 8))])
        #expect(frames(String(repeating: "y", count: 9) + "\r\n", limit: 10) == [.overlongLine(length: 11, ending: .crlf)])
    }

    /// The smuggling pattern of issue 15: an overlong line ending in a bare
    /// LF must say so, wherever the read boundaries fall, so that a "." after
    /// it cannot end DATA.
    @Test func overlongLineReportsItsEnding() {
        let long = String(repeating: "A", count: 1001)
        #expect(frames("\(long)\n.\r\n", mode: .data) == [.overlongLine(length: 1002, ending: .bareLF), line(".")])
        #expect(frames("\(long)\r\n", mode: .data) == [.overlongLine(length: 1003, ending: .crlf)])
        for split in [1, 500, 1000, 1001, 1002] {
            for ending in ["\n", "\r\n"] {
                let text = long + ending + "NOOP\r\n"
                let bytes = Array(text.utf8)
                var f = SMTPFramer()
                f.mode = .data
                var b = ByteBuffer(bytes: bytes[0..<min(split, bytes.count)])
                var got: [SMTPFrame] = []
                while let fr = f.next(&b) { got.append(fr) }
                b.writeBytes(bytes[min(split, bytes.count)...])
                while let fr = f.next(&b) { got.append(fr) }
                let expected = SMTPFrame.overlongLine(length: 1001 + ending.utf8.count, ending: ending == "\n" ? .bareLF : .crlf)
                #expect(got.first == expected, "split \(split) ending \(ending.debugDescription)")
            }
        }
    }

    @Test func bdatPayloadIsReadAsAChunk() {
        #expect(frames("BDAT 5 LAST\r\nab\r\ncNOOP\r\n") == [
            line("BDAT 5 LAST"), .chunk(ByteBuffer(string: "ab\r\nc"), isEnd: true), line("NOOP"),
        ])
        #expect(frames("BDAT 0 LAST\r\n") == [line("BDAT 0 LAST"), .chunk(ByteBuffer(), isEnd: true)])
        // An unparsable BDAT has no payload.
        #expect(frames("BDAT x\r\nNOOP\r\n") == [line("BDAT x"), line("NOOP")])
        // In DATA mode "BDAT" is just text.
        #expect(frames("BDAT 3\r\n", mode: .data) == [.text(ByteBuffer(string: "BDAT 3\r\n"))])
    }

    @Test func chunkArrivesInPieces() {
        var f = SMTPFramer()
        var b = ByteBuffer(string: "BDAT 6\r\nabc")
        #expect(f.next(&b) == line("BDAT 6"))
        #expect(f.next(&b) == .chunk(ByteBuffer(string: "abc"), isEnd: false))
        #expect(f.next(&b) == nil)
        #expect(f.inChunk)
        b.writeString("defNOOP\r\n")
        #expect(f.next(&b) == .chunk(ByteBuffer(string: "def"), isEnd: true))
        #expect(f.next(&b) == line("NOOP"))
    }

    /// A pipelined dialog with DATA, BDAT, dot-stuffing and errors gives the
    /// same replies and messages however the bytes are split.
    @Test func everySplitPointGivesTheSameResult() {
        let dialog = "EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test>\r\nDATA\r\n"
            + "Subject: t\r\n\r\n..leading dot\r\nline\r\n.\r\n"
            + "MAIL FROM:<a@x.test> BODY=8BITMIME\r\nRCPT TO:<c@local.test>\r\nBDAT 7\r\nab\r\n.\r\nBDAT 4 LAST\r\nc\n\r\nNOOP\r\n"
            + "FOO\r\nRSET\r\nQUIT\r\n"
        let bytes = Array(dialog.utf8)
        var whole = Driver()
        whole.feed(bytes: bytes)
        #expect(whole.commits.count == 2)
        #expect(whole.commits.first?.body == "Subject: t\r\n\r\n.leading dot\r\nline\r\n")
        #expect(whole.commits.last?.body == "ab\r\n.\r\nc\r\n\r\n")
        #expect(whole.closed)
        for split in 1..<bytes.count {
            var d = Driver()
            d.feed(bytes: Array(bytes[..<split]))
            d.feed(bytes: Array(bytes[split...]))
            #expect(d.transcript == whole.transcript, "split at \(split)")
            #expect(d.commits.map(\.body) == whole.commits.map(\.body), "split at \(split)")
        }
        var bytewise = Driver()
        for b in bytes { bytewise.feed(bytes: [b]) }
        #expect(bytewise.transcript == whole.transcript)
        #expect(bytewise.commits.map(\.body) == whole.commits.map(\.body))
    }

    /// DATA text comes as runs of plain lines; every other line alone.
    @Test func dataTextComesInRunsOfPlainLines() {
        func text(_ s: String) -> SMTPFrame { .text(ByteBuffer(string: s)) }
        #expect(frames("a\r\nb\r\n\r\nc", mode: .data) == [text("a\r\nb\r\n\r\n")])
        #expect(frames("a\r\n..b\r\nc\r\n.\r\n", mode: .data) == [text("a\r\n"), line("..b"), text("c\r\n"), line(".")])
        // A bare LF, a bare CR inside a line and a lone LF each stop a run.
        #expect(frames("a\r\nb\nc\r\n", mode: .data) == [text("a\r\n"), line("b", .bareLF), text("c\r\n")])
        #expect(frames("a\rb\r\nc\r\n", mode: .data) == [line("a\rb"), text("c\r\n")])
        #expect(frames("\nc\r\n", mode: .data) == [line("", .bareLF), text("c\r\n")])
        // The line limit counts the terminator, as for single lines.
        var f = SMTPFramer(commandLineLimit: 100, textLineLimit: 6)
        f.mode = .data
        var b = ByteBuffer(string: "abcd\r\nabcde\r\nx\r\n")
        #expect(f.next(&b) == text("abcd\r\n"))
        #expect(f.next(&b) == .overlongLine(length: 7, ending: .crlf))
        #expect(f.next(&b) == text("x\r\n"))
        #expect(f.next(&b) == nil)
        // Runs are off on request: then every line comes alone.
        var single = SMTPFramer()
        single.mode = .data
        single.textRuns = false
        var c = ByteBuffer(string: "a\r\nb\r\n")
        #expect(single.next(&c) == line("a"))
        #expect(single.next(&c) == line("b"))
    }

    /// Runs change nothing the session decides: random DATA texts (dots,
    /// bare CRs and LFs, long lines, too big), fed whole and in random
    /// pieces, give the same replies and bodies as line-by-line framing.
    @Test func textRunsMatchLineByLineFraming() {
        var rng = SystemRandomNumberGenerator()
        let pieces = ["a", "line of text", "", ".", "..", ".x", "\r", "\n", "x\ry", String(repeating: "l", count: 990),
                      String(repeating: "m", count: 1200), "BDAT 3", "\r\n.\n", "é"]
        for _ in 0..<300 {
            var text = ""
            for _ in 0..<Int.random(in: 0...12, using: &rng) {
                text += pieces.randomElement(using: &rng)! + (Bool.random(using: &rng) ? "\r\n" : ["\n", "\r\n", "\r\n\r\n"].randomElement(using: &rng)!)
            }
            let small = Bool.random(using: &rng)
            let dialog = "EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test>\r\nDATA\r\n" + text
                + "\r\n.\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test>\r\nDATA\r\nok\r\n.\r\nQUIT\r\n"
            let bytes = Array(dialog.utf8)
            func run(runs: Bool, split: Int?) -> Driver {
                var d = Driver(config: Driver.config { if small { $0.maxMessageSize = 600 } })
                d.framer.textRuns = runs
                if let split {
                    d.feed(bytes: Array(bytes[..<split]))
                    d.feed(bytes: Array(bytes[split...]))
                } else {
                    d.feed(bytes: bytes)
                }
                return d
            }
            let reference = run(runs: false, split: nil)
            #expect(reference.closed)
            for d in [run(runs: true, split: nil), run(runs: true, split: Int.random(in: 1..<bytes.count, using: &rng))] {
                #expect(d.transcript == reference.transcript, "\(text.debugDescription)")
                #expect(d.commits.map(\.body) == reference.commits.map(\.body), "\(text.debugDescription)")
            }
        }
    }
}
