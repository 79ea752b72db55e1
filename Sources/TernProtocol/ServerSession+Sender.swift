// The sender check at MAIL (issue 17: SPF's fail refused at MAIL, opt-in):
// the session asks for it with `.checkSender` and waits, as it waits for an
// Authenticator, then answers MAIL with the check's refusal or 250.

extension SMTPServerSession {
    /// The outcome of `.checkSender`: a refusal (5yz, or 4yz) or nil to accept the sender.
    public mutating func senderChecked(_ refusal: SMTPReply?) -> SessionAction {
        guard state == .checkingSender, let (path, params) = pendingMail else { return .reply([], close: false) }
        pendingMail = nil
        if let refusal {
            state = .ready
            return error(refusal)
        }
        mailFrom = path
        mailParams = params
        state = .mail
        return ok(SMTPReply(250, .senderOK, "Ok"))
    }
}

extension SMTPServerSession {
    /// The HELO/EHLO name given ("" before one).
    public var heloName: String { helo ?? "" }
}
