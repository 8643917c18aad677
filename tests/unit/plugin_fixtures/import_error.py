from wsproxy.plugin import Plugin, on

import a_module_that_does_not_exist_anywhere  # line 3


class Never(Plugin):
    @on("HTTP_REQUEST")
    def req(self, ctx, req):
        pass
