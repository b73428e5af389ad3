// Part of the Jetty 12 jetty-security API stand-in (tests/e2e/connect/README.md):
// Kafka Connect's REST server installs no security handler, so none is ever made.
package org.eclipse.jetty.security;

import org.eclipse.jetty.server.Handler;

/** Jetty's base of the handlers that authenticate and authorize requests. */
public abstract class SecurityHandler extends Handler.Wrapper {
    /** The identity service of this handler; none, as nothing authenticates. */
    public IdentityService getIdentityService() {
        return null;
    }
}
