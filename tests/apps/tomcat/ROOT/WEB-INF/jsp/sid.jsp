<%@ page contentType="text/plain; charset=UTF-8" trimDirectiveWhitespaces="true" %>
<%
  if (!"GET".equals(request.getMethod()) && !"HEAD".equals(request.getMethod())) { response.sendError(405); return; }
  out.print(session.getId()); // the JSP's implicit session: every visitor gets one
%>
