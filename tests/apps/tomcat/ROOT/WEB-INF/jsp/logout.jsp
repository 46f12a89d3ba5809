<%@ page contentType="text/plain; charset=UTF-8" trimDirectiveWhitespaces="true" %>
<%
  if (!"POST".equals(request.getMethod())) { response.sendError(405); return; }
  session.invalidate();
  response.sendRedirect(response.encodeRedirectURL("/"));
%>
