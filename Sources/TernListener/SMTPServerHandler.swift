// One SMTP connection: feeds bytes through the framer to the session machine
// and carries out what it returns — write replies, close, or hand a message
// to intake. While a commit is pending no further frame is decoded, so
// pipelined commands after the final dot wait for the 250 and for a DATA
// mode switch; replies of a pipelined group are flushed together.

import Logging
import NIOCore
import NIOSSL
import NIOTLS
import TernConcurrency
import TernIntake
import TernMetrics
import TernMailAuth
import TernProtocol
import TernStore

final class SMTPServerHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    struct Settings: Sendable {
        var session: SessionConfig
        var commandTimeout: TimeAmount
        var dataTimeout: TimeAmount
        var origin: Origin
        var dkimSign = true
        var tls: ServerTLS? = nil
        var authenticator: (any Authenticator)? = nil
        /// The longest the connection may last.
        var maxSession: TimeAmount = .hours(1)
        /// Message text held in memory by all sessions (nil: unbounded, tests).
        var budget: MessageMemoryBudget? = nil
        /// SPF, DKIM and DMARC for mail from untrusted, unauthenticated clients (nil: no checks).
        var verifier: MailVerifier? = nil
        var verifyPolicy: VerifyPolicy = .off
    }

    private var session: SMTPServerSession
    private var framer: SMTPFramer
    private var input: ByteBuffer? = nil
    /// A commit or an authentication is pending: decode no further frames.
    private var committing = false
    private var closing = false
    private var shutdownRequested = false
    private var readPaused = false
    /// For tests: reading is paused (see updateReading).
    var readingPaused: Bool { readPaused }
    /// Replies wait in the outbound buffer above its high-water mark: the
    /// client is not reading them, so no further command is decoded (and
    /// reading stops) until it does.
    private var writeBlocked = false
    /// Between STARTTLS's 220 and the end of the handshake.
    private var awaitingTLS = false
    /// The idle timer: one scheduled check that re-arms itself while input
    /// keeps moving the deadline, instead of a cancel and a new timer per read.
    private var timer: Scheduled<Void>? = nil
    private var timerFiresAt: NIODeadline = .distantFuture
    /// When the session times out; nil while nothing is awaited from the
    /// client (a commit or an authentication is running).
    private var deadline: NIODeadline? = nil
    private var context: ChannelHandlerContext? = nil
    /// Octets of message text this session holds against the budget.
    private var reserved = 0
    /// When the session has lasted `maxSession`. The idle timer fires then
    /// too (one timer per connection, not two: issue 21's per-connection cost).
    private var sessionEnds: NIODeadline = .distantFuture
    /// Closing: the last replies are written (or failed); else the timer
    /// that closes the connection anyway.
    private var lastRepliesWritten = false
    private var closeLimit: Scheduled<Void>? = nil
    /// The session's time ran out during a commit: close after its reply.
    private var expireAfterCommit = false
    private var logger: Logger
    /// SPF's verdict at MAIL for the transaction under way (the opt-in check), reused at the end of DATA.
    private var senderVerdict: SPFVerdict? = nil
    private let settings: Settings
    private let intake: Intake
    private let registry: SessionRegistry
    private let onClose: @Sendable () -> Void

    init(settings: Settings, client: ClientInfo, intake: Intake, registry: SessionRegistry, logger: Logger,
         onClose: @escaping @Sendable () -> Void) {
        self.settings = settings
        self.session = SMTPServerSession(config: settings.session, client: client)
        self.framer = SMTPFramer(commandLineLimit: settings.session.maxCommandLine + SMTPFramer.extensionAllowance,
                                 textLineLimit: settings.session.maxTextLine)
        self.intake = intake
        self.registry = registry
        self.onClose = onClose
        var l = logger
        l[metadataKey: "peer"] = "\(client.addressText)"
        self.logger = l
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        registry.add(self, eventLoop: context.eventLoop)
        TernMetrics.connectionOpened(listener: settings.session.role.rawValue)
        logger.debug("connect")
        if settings.session.role.implicitTLS {
            awaitingTLS = true // the greeting follows the handshake (RFC 8314 §3.3)
        } else {
            send([session.greeting()], context: context)
            context.flush()
        }
        sessionEnds = context.eventLoop.now + settings.maxSession
        armTimeout(context: context)
        context.fireChannelActive()
    }

    /// The connection has lasted `maxSession`: 421 and close, now or (during
    /// a commit, whose reply the client is owed) right after the commit.
    private func sessionExpired() {
        guard let context, !closing else { return }
        if committing { expireAfterCommit = true; return }
        logger.info("session lasted too long", metadata: ["state": "\(session.state)"])
        send([SMTPReply(421, .connectionDropped, "\(settings.session.hostname) Error: session too long, closing")], context: context)
        closeAfterFlush(context: context)
    }

    /// Brings this session's share of the memory budget in line with the
    /// message text it holds; past the budget the text is dropped (452).
    private func accountBody() {
        guard let budget = settings.budget, !committing else { return }
        let now = session.bodyBytes
        if now > reserved {
            if budget.reserve(now - reserved) {
                reserved = now
            } else {
                logger.warning("message memory budget spent; dropping message text", metadata: [
                    "in_use": "\(budget.inUse)", "limit": "\(budget.limit)",
                ])
                session.dropBodyForMemory()
                budget.release(reserved)
                reserved = 0
            }
        } else if now < reserved {
            budget.release(reserved - now)
            reserved = now
        }
    }

    private func releaseBudget() {
        settings.budget?.release(reserved)
        reserved = 0
    }

    func channelInactive(context: ChannelHandlerContext) {
        TernMetrics.connectionClosed(listener: settings.session.role.rawValue)
        stopTimer()
        if !committing { releaseBudget() } // a commit in flight still holds its text
        closing = true
        registry.remove(self)
        onClose()
        logger.debug("disconnect")
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        if closing { return }
        if input == nil {
            input = bytes
        } else {
            input!.writeBuffer(&bytes)
        }
        if !committing && !writeBlocked { armTimeout(context: context) }
        process(context: context)
    }

    /// Input held undecoded (while a commit, an authentication or the
    /// client's own unread replies hold us up) before reading pauses.
    static let maxBufferedInput = 1 << 20

    /// Reading runs while nothing holds decoding up or little input waits;
    /// paused, the kernel's receive buffer and TCP flow control push back
    /// on the client instead of our memory.
    private func updateReading(context: ChannelHandlerContext) {
        let pause = writeBlocked || (input?.readableBytes ?? 0) > SMTPServerHandler.maxBufferedInput
        guard pause != readPaused else { return }
        readPaused = pause
        context.channel.setOption(ChannelOptions.autoRead, value: !pause).whenFailure { _ in }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable && writeBlocked {
            writeBlocked = false
            armTimeout(context: context)
            process(context: context)
        }
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        logger.debug("connection error", metadata: ["error": "\(error)"])
        context.close(promise: nil)
    }

    /// Decodes and handles frames until input runs out, a commit starts, or the session closes.
    private func process(context: ChannelHandlerContext) {
        var wrote = false
        while !committing && !closing && !awaitingTLS, var buffer = input {
            if !context.channel.isWritable {
                if wrote { context.flush(); wrote = false }
                if !context.channel.isWritable {
                    // The client pipelines commands without reading the
                    // replies (a HELP flood): stop until it reads.
                    writeBlocked = true
                    break
                }
            }
            framer.mode = session.inputMode
            input = nil // avoid a copy-on-write while the framer consumes
            let frame = framer.next(&buffer)
            input = buffer
            guard let frame else { break }
            if let budget = settings.budget { session.memoryTight = budget.exhausted }
            let action = session.receive(frame)
            // A commit takes the text with it: it stays counted until the commit ends.
            if case .commit? = action {} else { accountBody() }
            guard let action else { continue }
            switch action {
            case .reply(let replies, let close):
                send(replies, context: context)
                wrote = true
                if close { closeAfterFlush(context: context); return }
            case .commit(let envelope, let body):
                committing = true
                deadline = nil
                if wrote { context.flush(); wrote = false }
                startCommit(envelope, body: body, context: context)
            case .startTLS(let reply):
                send([reply], context: context)
                context.flush()
                wrote = false
                beginTLS(context: context)
                return
            case .authenticate(let credentials, let mechanism):
                committing = true
                deadline = nil
                if wrote { context.flush(); wrote = false }
                startAuthentication(credentials, mechanism, context: context)
            case .checkSender(let path):
                committing = true
                deadline = nil
                if wrote { context.flush(); wrote = false }
                startSenderCheck(path, context: context)
            }
            if shutdownRequested && !committing && !session.inTransaction {
                send([session.shuttingDown()], context: context)
                closeAfterFlush(context: context)
                return
            }
        }
        if let i = input, i.readableBytes == 0 {
            input = nil
        } else if input != nil && input!.readerIndex > 64 * 1024 {
            input!.discardReadBytes()
        }
        if wrote { context.flush() }
        if !closing { updateReading(context: context) }
    }

    /// RFC 3207 §4.2: whatever the client sent after STARTTLS in the clear is
    /// dropped unread (the CVE-2011-0411 class of command injection); the
    /// 220 is already on its way, below the TLS handler added now.
    private func beginTLS(context: ChannelHandlerContext) {
        input = nil
        framer = SMTPFramer(commandLineLimit: settings.session.maxCommandLine + SMTPFramer.extensionAllowance,
                            textLineLimit: settings.session.maxTextLine)
        guard let tls = settings.tls else { context.close(promise: nil); return }
        awaitingTLS = true
        armTimeout(context: context)
        do {
            try context.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls.context), position: .first)
        } catch {
            logger.warning("cannot start TLS", metadata: ["error": "\(error)"])
            context.close(promise: nil)
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let tlsEvent = event as? TLSUserEvent, case .handshakeCompleted = tlsEvent, awaitingTLS {
            let version = (try? context.pipeline.syncOperations.handler(type: NIOSSLServerHandler.self))?.tlsVersion
            let description = tlsDescription(version)
            TernMetrics.tlsHandshake(version: description)
            awaitingTLS = false
            session.tlsEstablished(description)
            logger.debug("TLS established", metadata: ["tls": "\(description)"])
            if settings.session.role.implicitTLS {
                send([session.greeting()], context: context)
                context.flush()
            }
            armTimeout(context: context)
            process(context: context)
        }
        context.fireUserInboundEventTriggered(event)
    }

    private func startCommit(_ envelope: Envelope, body: ByteBuffer, context: ChannelHandlerContext) {
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let loop = context.eventLoop
        if let verifier = settings.verifier, !envelope.trustedClient, envelope.authUser == nil, let ip = session.client.address {
            // Mail from another MTA: check it first, then commit with the verdicts. The checks run as a task on this
            // loop; their DNS waits on the resolver thread, not on the loop.
            let atMail = senderVerdict
            senderVerdict = nil
            let message = Array(body.readableBytesView)
            let mailFrom = envelope.mailFrom?.address ?? ""
            Task(executorPreference: EventLoopExecutor(loop)) {
                let report = await verifier.verify(ip: ip, mailFrom: mailFrom, helo: envelope.helo, message: message, spfAtMail: atMail)
                loop.execute { bound.value.verified(report, envelope, body: body, loop: loop) }
            }
            return
        }
        commit(envelope, body: body, authentication: nil, loop: loop)
    }

    /// The checks are done: refuse (enforce, DMARC p=reject) or commit with the verdicts. Also when
    /// the client has left meanwhile: as for any commit in flight, the text is committed and its budget given back.
    private func verified(_ report: AuthenticationReport, _ envelope: Envelope, body: ByteBuffer, loop: any EventLoop) {
        logger.info("authentication", metadata: [
            "spf": "\(report.spf.result.rawValue)", "dkim": "\(report.dkimSummary.rawValue)", "dmarc": "\(report.dmarc.result.rawValue)",
            "disposition": "\(report.dmarc.disposition.rawValue)", "from": "<\(envelope.mailFrom?.address ?? "")>",
        ])
        if settings.verifyPolicy == .enforce, report.dmarc.result == .fail, report.dmarc.disposition == .reject {
            commitFinished(.rejected(SMTPReply(550, .securityPolicy,
                "Message rejected: DMARC policy of \(report.dmarc.fromDomain) is reject, and neither SPF nor DKIM passed for it")))
            return
        }
        commit(envelope, body: body, authentication: report.columns, loop: loop)
    }

    private func commit(_ envelope: Envelope, body: ByteBuffer, authentication: AuthenticationColumns?, loop: any EventLoop) {
        let bound = NIOLoopBound(self, eventLoop: loop)
        // The outcome comes on this loop: the hand-over to the scheduler runs
        // here too, not on the writer thread that every commit waits for.
        intake.accept(envelope, body: body, origin: settings.origin, authUser: envelope.authUser, sign: settings.dkimSign,
                      authentication: authentication, on: loop) { outcome in
            bound.value.commitFinished(outcome)
        }
    }

    /// Runs the Authenticator off the event loop; the credentials go nowhere else.
    private func startAuthentication(_ credentials: Credentials, _ mechanism: SASLMechanism, context: ChannelHandlerContext) {
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let loop = context.eventLoop
        guard let authenticator = settings.authenticator else {
            authFinished(.unavailable)
            return
        }
        let client = session.client
        // On this connection's loop, not Swift's global pool: a pool that is
        // busy (or blocked) must not hold an AUTH reply back.
        Task(executorPreference: EventLoopExecutor(loop)) {
            let outcome = await authenticator.authenticate(credentials, mechanism: mechanism, client: client)
            loop.execute { bound.value.authFinished(outcome) }
        }
    }

    /// SPF at MAIL (opt-in): a fail refuses MAIL; anything else, DNS failures included, accepts it.
    private func startSenderCheck(_ path: SMTPPath, context: ChannelHandlerContext) {
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let loop = context.eventLoop
        senderVerdict = nil
        guard let verifier = settings.verifier, let ip = session.client.address else {
            resume { $0.senderChecked(nil) }
            return
        }
        var mailFrom = ""
        if case .mailbox(let m) = path { mailFrom = m.address }
        let helo = session.heloName
        Task(executorPreference: EventLoopExecutor(loop)) {
            let verdict = await verifier.spf.check(ip: ip, mailFrom: mailFrom, helo: helo)
            loop.execute {
                bound.value.senderVerdict = verdict
                bound.value.resume { $0.senderChecked(MailVerifier.mailRefusal(verdict, ip: ip)) }
            }
        }
    }

    private func commitFinished(_ outcome: CommitOutcome) {
        releaseBudget() // the text is in the store now, or refused
        switch outcome {
        case .accepted(let id):
            logger.debug("accepted", metadata: ["msg": "\(id)"])
            TernMetrics.received(origin: settings.origin.rawValue)
        case .rejected(let reply):
            TernMetrics.rejected(reason: reply.enhanced?.description ?? "\(reply.code)")
        }
        resume { $0.commitFinished(outcome) }
    }

    private func authFinished(_ outcome: AuthOutcome) {
        resume { $0.authFinished(outcome) }
    }

    /// A commit or an authentication finished: give the session its result,
    /// send the reply, and go on with any input that waited.
    private func resume(_ step: (inout SMTPServerSession) -> SessionAction) {
        committing = false
        guard let context, !closing else { return } // the client left: nothing to tell (a commit stays committed)
        if case .reply(let replies, let close) = step(&session) {
            send(replies, context: context)
            if close { closeAfterFlush(context: context); return }
        }
        if shutdownRequested {
            send([session.shuttingDown()], context: context)
            closeAfterFlush(context: context)
            return
        }
        if expireAfterCommit {
            send([SMTPReply(421, .connectionDropped, "\(settings.session.hostname) Error: session too long, closing")], context: context)
            closeAfterFlush(context: context)
            return
        }
        context.flush()
        armTimeout(context: context)
        process(context: context)
    }

    private func send(_ replies: [SMTPReply], context: ChannelHandlerContext) {
        // One buffer for all of them, written without an intermediate String.
        var buffer = context.channel.allocator.buffer(capacity: 64 * replies.count)
        for reply in replies { reply.writeWire(to: &buffer) }
        context.write(wrapOutboundOut(buffer), promise: nil)
    }

    private func closeAfterFlush(context: ChannelHandlerContext) {
        closing = true
        stopTimer()
        let promise = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(capacity: 0)), promise: promise)
        let channel = context.channel
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        // Runs at once when the bytes went out at once (the usual case).
        promise.futureResult.whenComplete { _ in
            bound.value.lastRepliesWritten = true
            bound.value.closeLimit?.cancel()
            channel.close(promise: nil)
        }
        if !lastRepliesWritten {
            // A client that does not read its last replies does not hold the
            // connection. The timer goes with the connection: one left
            // behind held each closed channel for ten seconds.
            closeLimit = context.eventLoop.scheduleTask(in: .seconds(10)) { channel.close(promise: nil) }
        }
    }

    /// RFC 5321 §4.5.3.2: the server waits at least 5 minutes for a command
    /// and (we choose) 3 minutes for each block of DATA text.
    private func armTimeout(context: ChannelHandlerContext) {
        var amount = session.inputMode == .data || framer.inChunk ? settings.dataTimeout : settings.commandTimeout
        // A TLS handshake gets 30 s at most: a client that never finishes one holds a connection for nothing.
        if awaitingTLS { amount = min(amount, .seconds(30)) }
        let due = context.eventLoop.now + amount
        deadline = due
        let wake = min(due, sessionEnds)
        // A timer already set to fire no later re-arms itself when it does.
        if timer != nil && timerFiresAt <= wake { return }
        timer?.cancel()
        schedule(at: wake, context: context)
    }

    private func schedule(at due: NIODeadline, context: ChannelHandlerContext) {
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        timerFiresAt = due
        timer = context.eventLoop.scheduleTask(deadline: due) {
            bound.value.timerFired()
        }
    }

    /// The idle deadline or the session's end, whichever came; else the
    /// timer re-arms for the earlier of the two (while a commit runs there
    /// is no idle deadline, but the session's end still comes).
    private func timerFired() {
        timer = nil
        guard let context, !closing else { return }
        let now = context.eventLoop.now
        if now >= sessionEnds {
            sessionExpired()
        } else if let deadline, now >= deadline {
            timedOut()
        } else {
            schedule(at: min(deadline ?? .distantFuture, sessionEnds), context: context)
        }
    }

    private func stopTimer() {
        timer?.cancel()
        timer = nil
        deadline = nil
    }

    private func timedOut() {
        guard let context, !closing, !committing else { return }
        if awaitingTLS { // no TLS yet to say 421 over
            logger.info("timeout during TLS handshake")
            closing = true
            context.close(promise: nil)
            return
        }
        logger.info("timeout", metadata: ["state": "\(session.state)"])
        send([session.timedOut()], context: context)
        closeAfterFlush(context: context)
    }

    /// Graceful shutdown: idle sessions are told 421 now; a session inside a
    /// transaction may finish it and is told after its reply.
    func beginShutdown() {
        guard let context, !closing else { return }
        shutdownRequested = true
        if !session.inTransaction && !committing {
            send([session.shuttingDown()], context: context)
            closeAfterFlush(context: context)
        }
    }

    func forceClose() {
        context?.close(promise: nil)
    }
}
