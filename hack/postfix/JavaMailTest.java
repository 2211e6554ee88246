// The original form's "Test Connection", reproduced with Jakarta Mail (JavaMail 2.0) for
// the interop matrix (tests/test_interop_matrix.py, docs/interop.md).
//
// It does what a JavaMail-based form does: build the Session properties from the form's
// fields and call Transport.connect(host, port, user, password) - EHLO, STARTTLS when
// enabled, AUTH - then close.  No MAIL FROM / RCPT TO: that is the original's blind spot
// the relay check exists for.  The caller (tests/support/postfix.py: run_javamail) maps an
// ExternalSmtp spec to mail.smtp.* properties; everything else keeps JavaMail's defaults
// (e.g. mail.smtp.ssl.checkserveridentity=false), as the form would have it.  The CA comes
// from -Djavax.net.ssl.trustStore.
//
// Usage: java -cp JARS:DIR JavaMailTest HOST PORT USER|- [mail.smtp.KEY=VALUE ...]
// The password (or OAuth token) is read from the environment variable JAVAMAIL_PASSWORD,
// never from argv.  Prints one line: "passed" or "failed: <Exception>: <message>".

import jakarta.mail.MessagingException;
import jakarta.mail.Session;
import jakarta.mail.Transport;
import java.util.Properties;

public final class JavaMailTest {
    public static void main(String[] args) {
        String host = args[0];
        int port = Integer.parseInt(args[1]);
        String user = args[2].equals("-") ? null : args[2];
        String password = System.getenv("JAVAMAIL_PASSWORD");

        Properties p = new Properties();
        p.put("mail.smtp.host", host);
        p.put("mail.smtp.port", String.valueOf(port));
        p.put("mail.smtp.auth", String.valueOf(user != null));
        for (int i = 3; i < args.length; i++) {
            int eq = args[i].indexOf('=');
            p.put(args[i].substring(0, eq), args[i].substring(eq + 1));
        }
        Session session = Session.getInstance(p);
        try (Transport t = session.getTransport("smtp")) {
            t.connect(host, port, user, user == null ? null : password);
            System.out.println("passed");
        } catch (MessagingException | RuntimeException e) {
            System.out.println("failed: " + e.getClass().getSimpleName() + ": " + firstLine(e));
        }
    }

    private static String firstLine(Exception e) {
        String m = String.valueOf(e.getMessage());
        int nl = m.indexOf('\n');
        return (nl >= 0 ? m.substring(0, nl) : m).trim();
    }
}
