import SwitchyardSupport

/// The input being tried, where a signal handler can reach it without allocating: if the parser
/// ends the process by a signal, the handler (on a stack of its own, so a stack overflow is caught
/// too) writes the input to a file and exits with status 86.
enum CrashCatcher {
    nonisolated(unsafe) static var input: UnsafeMutablePointer<UInt8> = .allocate(capacity: 1)
    nonisolated(unsafe) static var length = 0
    nonisolated(unsafe) static var capacity = 1
    nonisolated(unsafe) static var descriptor: Int32 = -1
    nonisolated(unsafe) static var message: [UInt8] = []

    static func install(directory: String) {
        mkdir(directory, 0o755)
        let path = directory + "/crash-input"
        message = Array("switchyard-fuzz: a signal ended the parser; the input is in \(path)\n".utf8)
        descriptor = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        let stackSize = 1 << 20
        var stack = stack_t()
        stack.ss_sp = UnsafeMutableRawPointer.allocate(byteCount: stackSize, alignment: 16)
        stack.ss_size = stackSize
        stack.ss_flags = 0
        sigaltstack(&stack, nil)
        var action = sigaction()
        action.__sigaction_handler.sa_handler = { _ in
            if CrashCatcher.descriptor >= 0 { _ = write(CrashCatcher.descriptor, CrashCatcher.input, CrashCatcher.length) }
            CrashCatcher.message.withUnsafeBytes { _ = write(2, $0.baseAddress, $0.count) }
            _exit(86)
        }
        action.sa_flags = Int32(SA_ONSTACK)
        for s in [SIGSEGV, SIGBUS, SIGILL, SIGTRAP, SIGABRT, SIGFPE] { sigaction(s, &action, nil) }
    }

    /// Records the input about to be tried.
    static func current(_ target: String, _ bytes: [UInt8]) {
        if bytes.count > capacity {
            input.deallocate()
            capacity = bytes.count
            input = .allocate(capacity: capacity)
        }
        bytes.withUnsafeBufferPointer { input.update(from: $0.baseAddress!, count: bytes.count) }
        length = bytes.count
    }
}
